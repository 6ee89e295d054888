"""End to end on the default runtime: a real server whose `default` runtime is the image
set-up builds (the suite's default runtime). pandas, numpy and matplotlib import in a
thread, the plot saved there comes back through MCP `files_download` as an image, and the
host's tools are not in the sandbox."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator

import pytest
from mcp.types import ImageContent

from tests.harness import Server, start_server, stop_server, text_of, unique
from tests.mcp.test_http import connect
from tests.runtime.image import default_layout

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

PLOT = """
import json, shutil
import pandas, numpy, matplotlib
import matplotlib.pyplot as plt
frame = pandas.DataFrame({"day": numpy.arange(1, 8), "sales": [3, 5, 4, 8, 9, 7, 11]})
frame.plot(x="day", y="sales", title="Sales per day")
plt.savefig("sales.png")
print(json.dumps({"backend": matplotlib.get_backend(), "numpy": numpy.__file__,
                  "gcc": shutil.which("gcc"), "valgrind": shutil.which("valgrind")}))
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    default_layout()  # built, and so the shared runtimes' default (harness.default_image)
    running = start_server(tmp_path_factory.mktemp("default-runtime"))
    yield running
    stop_server(running)


async def test_pandas_plot_comes_back_as_an_image(served: Server) -> None:
    thread = unique("default-runtime")
    async with connect(served, served.key) as client:
        result = await client.call_tool("sandbox_execute", {"code": PLOT, "thread_id": thread})
        assert result.is_error is False, text_of(result)
        seen = json.loads(text_of(result))
        download = await client.call_tool("files_download", {"id": thread, "path": "sales.png"})
    assert seen["backend"].lower() == "agg"
    assert seen["numpy"].startswith("/usr/local/lib/python3.11/dist-packages/")
    assert (seen["gcc"], seen["valgrind"]) == (None, None)  # the host's /usr is not there
    assert download.is_error is False, text_of(download)
    assert download.structured_content is not None
    assert download.structured_content["mime_type"] == "image/png"
    image = download.content[1]
    assert isinstance(image, ImageContent) and image.mime_type == "image/png"
    png = base64.b64decode(image.data)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert struct.unpack(">II", png[16:24]) == (640, 480)
