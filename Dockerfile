# volbackup as a container, for running it on a schedule next to the engine it backs up.
#
#   docker build -t volbackup .
#   docker run --rm -v /var/run/docker.sock:/var/run/docker.sock \
#       -v /srv/backups:/srv/backups -v /etc/volbackup.toml:/etc/volbackup.toml:ro \
#       volbackup run --config /etc/volbackup.toml
#
# docs/scheduling.md explains the mounts, the host name and a systemd timer for it.
FROM python:3.12-slim

COPY pyproject.toml README.md /src/
COPY volbackup /src/volbackup
RUN pip install --no-cache-dir /src && rm -rf /src

# Root is needed for the engine socket on most hosts; run with --user if yours differs.
ENTRYPOINT ["volbackup"]
CMD ["--help"]
