FROM scratch
COPY rootfs/ /
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt TMPDIR=/tmp
ENTRYPOINT ["/usr/bin/paas-runner"]
