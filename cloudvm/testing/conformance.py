"""The conformance kit: one end-to-end check of the whole cloudvm contract.

Every driver (ours, a third party's, or a real cloud account) must pass it. It
extends the Arvados ``cloudtest`` sequence; the steps, in order
(:data:`STEPS`):

1. make the InstanceSet (a fresh id per run unless one is given);
2. list it and refuse to run if it already has instances (unless told to
   destroy them first);
3. bad input (an init command of 1 KiB, invalid tags, reserved ``cloudvm-``
   keys) raises ValueError/TypeError, and the listing is unchanged;
4. create an instance with a run tag and awkward tag values, and an init
   command that writes a marker; if create raises, poll the listing until the
   instance appears (a failed create may still have created it) or the boot
   timeout passes;
5. a create that returned is in the very next listing;
6. ``Instance.tags`` is exactly what was passed (no ``cloudvm-`` tags);
7. listings with non-matching tags leave the instance out;
8. a second InstanceSet with another id sees none of ours, and an instance
   created in it is never listed by ours; it is destroyed through its own set;
9. re-list until the instance has an address and a boot probe succeeds over
   :class:`cloudvm.SSHExecutor`, which verifies the host key through the
   target (NotImplementedError fails unless ``trust_on_first_use``);
10. ``verify_host_key`` refuses a random key without a connection and an
    impostor SSH server that is not the instance;
11. the init command's marker is there; 12. the optional extra command runs;
13. ``set_tags`` replaces all tags (reserved keys refused), and re-listings
    show the new tags and not the old ones;
14. ``create`` cancelled after each of ``cancel_delays`` seconds leaves no
    instance without the run tag; those that exist are destroyed;
15. destroy, then re-list until gone; destroying again is a no-op;
16. cleanup: whatever happened, every instance the run made is destroyed;
17. ``stop()`` both sets.

An instance that a broken driver leaves without even its InstanceSetID tag is
invisible through the contract; look for it in the provider's console.

Use it from code (the ``cloudvm cloudtest`` command does)::

    report = await run_conformance(
        ConformanceConfig(
            driver="ec2", config=config, image_id=ImageID("ami-..."),
            instance_type=itype, ssh_key=asyncssh.read_private_key("id_ed25519"),
        ),
        progress=print,
    )
    assert report.ok, str(report)

or from pytest (with pytest-asyncio), one test per step::

    from cloudvm.testing.conformance import ConformanceConfig, ConformanceSuite

    class TestMyDriver(ConformanceSuite):
        @pytest.fixture
        def conformance_config(self, tmp_path):
            return ConformanceConfig(
                driver="mydriver", config={...}, image_id=ImageID("img"),
                instance_type=SMALL, ssh_key=asyncssh.generate_private_key("ssh-ed25519"),
                boot_timeout=60, poll_interval=0.2,
            )

Against a local stand-in for the cloud, :func:`local_test_config` gives
seconds-scale timeouts, a fresh key, shared tags and an extra command, so
that a broken driver fails fast and no step is skipped::

    local_test_config("mydriver", ImageID("img"), SMALL, config={...})

:class:`ConformanceSuite` needs pytest; importing this module does not.
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from ._conformance_local import local_test_config as local_test_config
from ._conformance_report import STEP_BAD_INPUTS as STEP_BAD_INPUTS
from ._conformance_report import STEP_BOOT as STEP_BOOT
from ._conformance_report import STEP_CANCELLATION as STEP_CANCELLATION
from ._conformance_report import STEP_CLEANUP as STEP_CLEANUP
from ._conformance_report import STEP_CREATE as STEP_CREATE
from ._conformance_report import STEP_DESTROY as STEP_DESTROY
from ._conformance_report import STEP_EXTRA_COMMAND as STEP_EXTRA_COMMAND
from ._conformance_report import STEP_HOST_KEY as STEP_HOST_KEY
from ._conformance_report import STEP_INIT_COMMAND as STEP_INIT_COMMAND
from ._conformance_report import STEP_LEFTOVERS as STEP_LEFTOVERS
from ._conformance_report import STEP_LISTED_AT_ONCE as STEP_LISTED_AT_ONCE
from ._conformance_report import STEP_MAKE_SET as STEP_MAKE_SET
from ._conformance_report import STEP_OTHER_SETS as STEP_OTHER_SETS
from ._conformance_report import STEP_SET_TAGS as STEP_SET_TAGS
from ._conformance_report import STEP_STOP as STEP_STOP
from ._conformance_report import STEP_TAG_FILTER as STEP_TAG_FILTER
from ._conformance_report import STEP_TAGS_EXACT as STEP_TAGS_EXACT
from ._conformance_report import STEPS as STEPS
from ._conformance_report import ConformanceConfig as ConformanceConfig
from ._conformance_report import ConformanceReport as ConformanceReport
from ._conformance_report import StepResult as StepResult
from ._conformance_report import StepStatus as StepStatus
from ._conformance_run import RUN_TAG as RUN_TAG
from ._conformance_run import ProgressCallback as ProgressCallback
from ._conformance_run import run_conformance as run_conformance

if _TYPE_CHECKING:
    from ._conformance_pytest import ConformanceSuite as ConformanceSuite

__all__ = [
    "RUN_TAG",
    "STEPS",
    "STEP_BAD_INPUTS",
    "STEP_BOOT",
    "STEP_CANCELLATION",
    "STEP_CLEANUP",
    "STEP_CREATE",
    "STEP_DESTROY",
    "STEP_EXTRA_COMMAND",
    "STEP_HOST_KEY",
    "STEP_INIT_COMMAND",
    "STEP_LEFTOVERS",
    "STEP_LISTED_AT_ONCE",
    "STEP_MAKE_SET",
    "STEP_OTHER_SETS",
    "STEP_SET_TAGS",
    "STEP_STOP",
    "STEP_TAGS_EXACT",
    "STEP_TAG_FILTER",
    "ConformanceConfig",
    "ConformanceReport",
    "ConformanceSuite",
    "ProgressCallback",
    "StepResult",
    "StepStatus",
    "local_test_config",
    "run_conformance",
]


def __getattr__(name: str) -> _Any:
    # ConformanceSuite imports pytest, which users of run_conformance (the
    # cloudvm command, a dispatcher's smoke test) need not have installed.
    if name == "ConformanceSuite":
        try:
            from ._conformance_pytest import ConformanceSuite
        except ImportError as exc:  # pragma: no cover - pytest is a test dependency
            raise ImportError(
                "ConformanceSuite needs pytest and pytest-asyncio. Install them with: "
                "pip install pytest pytest-asyncio"
            ) from exc
        return ConformanceSuite
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


for _cls in (ConformanceConfig, ConformanceReport, StepResult, StepStatus):
    _cls.__module__ = __name__
