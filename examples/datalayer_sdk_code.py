"""Code written for the Datalayer SDK's RuntimeService, with only the import changed.

Needs a Datalayer account: set DATALAYER_API_KEY (or run `datalayer login` and
`pip install dlexec[keyring]`), and DATALAYER_RUN_URL if you do not use prod1:

    DATALAYER_API_KEY=... python examples/datalayer_sdk_code.py

It creates one paid runtime (python-cpu-env, 10 minutes reserved), runs code in it, and
deletes it at the end of the `with` block. Everything below the import is the SDK's API
(datalayer_core 1.1.x, datalayer_core/services/runtimes/runtime.py).
"""

import os

# from datalayer_core.services.runtimes.runtime import RuntimeService   # before
from dlexec import RuntimeService  # after: the only line that changed

RUN_URL = os.environ.get("DATALAYER_RUN_URL", "https://prod1.datalayer.run")
TOKEN = os.environ.get("DATALAYER_API_KEY")

with RuntimeService("sdk-example", environment="python-cpu-env", run_url=RUN_URL, token=TOKEN) as runtime:
    print("runtime:", runtime.pod_name, "until", runtime.expired_at, "burning", runtime.burning_rate, "credits/s")

    response = runtime.execute("import sys\nprint(sys.version_info[:2])")
    print("execute:", response.model_dump(include={"success", "stdout"}))

    total = runtime.execute_code("total = sum(values)", variables={"values": [1, 2, 3]}, output="total")
    print("total:", total)

    runtime.set_variable("greeting", "hello")
    print("get_variable:", runtime.get_variable("greeting"))

    response = runtime.execute_code("1 / 0")
    print("an error:", response.stderr.strip().splitlines()[-1])

    print("urls:", runtime.urls.run_url, runtime.urls.runtimes_url)
    print("credits limit:", runtime.model.credits_limit)
print("terminated: the runtime was deleted")
