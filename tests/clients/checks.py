"""A tiny check runner shared by the client scripts: every check runs, each
prints `ok NAME` or `FAIL NAME: reason`, and the script exits 1 if any failed,
so one run shows every incompatibility instead of the first one."""
import sys
import traceback

_failed = []


def check(name):
    """Decorator: run the function now as the check called `name`."""

    def run(fn):
        try:
            fn()
            print(f"ok {name}", flush=True)
        except Exception as err:  # noqa: BLE001 - every failure is reported
            _failed.append(name)
            detail = "".join(traceback.format_exception_only(type(err), err)).strip()
            print(f"FAIL {name}: {detail}", flush=True)
        return fn

    return run


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def finish():
    if _failed:
        print(f"{len(_failed)} check(s) failed: {', '.join(_failed)}", flush=True)
        sys.exit(1)
    print("all checks passed", flush=True)
