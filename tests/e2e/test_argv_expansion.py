"""`${NAME}` in `build` and `release` argv is expanded as in `command`, without a shell.

The spec reference and DESIGN.md promise it and validation checks the names, but the
process runtime ran both argv lists raw: a build got the literal `${ONDECK_APP}`.
The commands here are python with the values as arguments (no shell that could
expand them itself). Real git, real `ondeck up`, real processes.
"""

from __future__ import annotations

from pathlib import Path

from conftest import Repo
from test_lifecycle import Factory, envapp_spec, served_by_all, with_envapp

WRITE = "import sys; open(sys.argv[1], 'w').write(sys.argv[2])"


def test_build_and_release_argv_get_their_variables(repo: Repo, ondeck: Factory) -> None:
    extra = (
        f'    build: ["python3", "-c", "{WRITE}", "built.txt", "${{ONDECK_APP}}:${{GREETING}}"]\n'
        f'    release: ["python3", "-c", "{WRITE}", "${{ONDECK_DATA_DIR}}/released.txt",\n'
        '              "${ONDECK_ENV}/${ONDECK_SERVICE}/${GREETING}/$${LITERAL}"]\n'
    )
    spec = envapp_spec(replicas=1, env="{GREETING: hi}", extra=extra)
    sha = with_envapp(repo).commit("expanded argv", spec)
    od = ondeck(repo.path)
    od.wait_synced(sha)
    [doc] = served_by_all(od)
    assert doc["built"] == "shop:hi"
    released = Path(doc["data_dir"]) / "released.txt"
    assert released.read_text() == "default/web/hi/${LITERAL}"
