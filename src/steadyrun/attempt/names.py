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

#: Exit status of a worker whose attempt was preempted (asked to stop early and save):
#: every executor maps it to the failure kind ``preempted``.
EXIT_PREEMPTED = 76
#: The attempt's number (1, 2, ...), set by the engine for every attempt.
ATTEMPT_NUMBER_ENV = "STEADYRUN_ATTEMPT"
#: How the task's previous attempt ended (a failure kind), when there was one.
PREVIOUS_KIND_ENV = "STEADYRUN_PREVIOUS_KIND"
#: How many attempts of the task were preempted before this one.
PREEMPTIONS_ENV = "STEADYRUN_PREEMPTIONS"
#: ``1``: SIGTERM means "preempted" for this worker (a backend that stops with SIGTERM).
PREEMPT_ON_TERM_ENV = "STEADYRUN_PREEMPT_ON_TERM"
#: A file an executor writes into the attempt folder before SIGTERM to say "preempted".
PREEMPT_MARKER = "preempt"
#: The payload a class payload's ``checkpoint()`` returned, in the task's folder.
CHECKPOINT_FILE = "checkpoint.pkl"
