"""The names in an attempt folder and the environment variables a worker reads.

Constants only and no imports, so the worker, which starts once per attempt, pays
nothing for them; :mod:`steadyrun.attempt.folder` documents what each file holds.
"""

PAYLOAD_YAML = "payload.yaml"
PAYLOAD_PKL = "payload.pkl"
IDENTITY_FILE = "identity.json"
STDOUT_LOG = "stdout.log"
STDERR_LOG = "stderr.log"
RESULT_FILE = "result.pkl"
ERROR_FILE = "error.json"
SAMPLES_FILE = "samples.json"

#: The attempt id a worker runs; also tags every process of a Script payload.
ATTEMPT_ID_ENV = "STEADYRUN_ATTEMPT_ID"
#: The pid of the controller that launched a worker: a worker whose parent is no longer
#: that process does not start its payload.
CONTROLLER_PID_ENV = "STEADYRUN_CONTROLLER_PID"
