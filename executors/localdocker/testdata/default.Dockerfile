FROM paas-runner-host:1.2.3
COPY runner.toml /etc/paas-runner/runner.toml
COPY job.json /etc/paas-runner/job.json
ENTRYPOINT ["/usr/bin/paas-runner", "exec-fetched-job", "--config", "/etc/paas-runner/runner.toml", "/etc/paas-runner/job.json"]
