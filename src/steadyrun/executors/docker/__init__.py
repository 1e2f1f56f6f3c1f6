"""The Docker backend: one container per attempt (:class:`DockerExecutor`), and what a
container is made of and found again by (:mod:`.containers`). Needs the ``docker``
package (``pip install 'steadyrun[docker]'``), imported only when a container is made."""

from steadyrun.executors.docker.executor import DockerExecutor

__all__ = ["DockerExecutor"]
