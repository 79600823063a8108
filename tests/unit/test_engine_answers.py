"""What volbackup makes of the engine's answers where Docker and Podman differ (the
answers as each engine gives them; tests/integration/test_podman.py asks a real one)."""

from __future__ import annotations

import docker.errors
import requests

from volbackup.docker.client import short
from volbackup.docker.facts import engine_product
from volbackup.docker.helpers import _name_taken

PODMAN_VERSION = {  # GET /version of Podman 4.3.1 (Debian 12), trimmed
    "Platform": {"Name": "linux/amd64/debian-12"},
    "Components": [{"Name": "Podman Engine", "Version": "4.3.1"},
                   {"Name": "Conmon", "Version": "conmon version 2.1.6"},
                   {"Name": "OCI Runtime (runc)", "Version": "runc version 1.1.5"}],
    "Version": "4.3.1", "ApiVersion": "1.41"}
DOCKER_VERSION = {  # GET /version of Debian's docker.io 20.10, trimmed
    "Platform": {"Name": ""},
    "Components": [{"Name": "Engine", "Version": "20.10.24+dfsg1"},
                   {"Name": "containerd", "Version": "1.6.20"}, {"Name": "runc"}],
    "Version": "20.10.24+dfsg1", "ApiVersion": "1.41"}


def test_podman_is_known_by_its_components_or_platform():
    assert engine_product(PODMAN_VERSION) == "Podman"
    assert engine_product({"Platform": {"Name": "Podman Engine"}}) == "Podman"
    assert engine_product(DOCKER_VERSION) == "Docker"
    assert engine_product({"Platform": {"Name": "Docker Engine - Community"}}) == "Docker"


def test_odd_version_answers_are_docker_not_a_crash():
    for answer in ({}, {"Components": None, "Platform": None}, {"Components": [None, {}]},
                   {"Components": [{"Name": None}]}):
        assert engine_product(answer) == "Docker"


def _api_error(status: int, text: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return docker.errors.APIError("error", response=response, explanation=text)


def test_a_taken_name_is_409_on_docker_and_500_on_podman():
    assert _name_taken(_api_error(409, 'Conflict. The container name "/x" is already in use'))
    assert _name_taken(_api_error(500, 'container create: creating container storage: the '
                                       'container name "x" is already in use by 3695. You '
                                       'have to remove that container to be able to reuse '
                                       'that name: that name is already in use'))
    assert not _name_taken(_api_error(500, "no space left on device"))


def test_podmans_copier_struct_is_cut_from_messages():
    text = ('error during bulk transfer for copier.request{Request:"PUT", Root:"/", '
            'GetOptions:copier.GetOptions{UIDMap:[]idtools.IDMap(nil), ChownDirs:'
            '(*idtools.IDPair)(nil)}, Rename:map[string]string(nil)}: copier: put: error '
            'creating "/data/x": link /data/y /data/x: no such file or directory')
    assert short(_api_error(500, text)) == (
        'error during bulk transfer: copier: put: error creating "/data/x": link /data/y '
        '/data/x: no such file or directory')
    assert short(_api_error(500, "plain {braces} stay")) == "plain {braces} stay"
