FROM scratch
COPY paas-runner /usr/bin/paas-runner
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY tmp /tmp
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt TMPDIR=/tmp
ENTRYPOINT ["/usr/bin/paas-runner"]
