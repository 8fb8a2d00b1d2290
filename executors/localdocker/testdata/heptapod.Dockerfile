FROM registry.example/heptapod-runner:0.7.0
COPY runner.toml /etc/heptapod-runner/runner.toml
COPY job.json /etc/heptapod-runner/job.json
ENV DEBUG="true"
ENTRYPOINT ["/usr/bin/gitlab-runner", "exec-fetched-job", "--config", "/etc/heptapod-runner/runner.toml", "/etc/heptapod-runner/job.json"]
