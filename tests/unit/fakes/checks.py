"""Checks that a fake still looks like what it stands for, and of refusals."""

from __future__ import annotations

import inspect

import pytest

from shop_runtime.errors import ServiceError


def public_async_methods(cls: type) -> dict[str, inspect.Signature]:
    """name -> signature of a class's public coroutine methods."""
    return {name: inspect.signature(f) for name, f in vars(cls).items()
            if not name.startswith("_") and inspect.iscoroutinefunction(f)}


def install(monkeypatch, module, fake: object) -> None:
    """Replaces every public async function of a repository module by the fake's method of the same name,
    checking that both take the same parameters (so a changed repository breaks the fake loudly)."""
    for name, func in vars(module).items():
        if name.startswith("_") or not inspect.iscoroutinefunction(func) or func.__module__ != module.__name__:
            continue
        method = getattr(fake, name)
        assert list(inspect.signature(method).parameters) == list(inspect.signature(func).parameters), (
            f"{type(fake).__name__}.{name} does not take the parameters of {module.__name__}.{name}")
        monkeypatch.setattr(module, name, method)


async def refused(reason: str, call) -> ServiceError:
    """The ServiceError `call` raises, which must have `reason`."""
    with pytest.raises(ServiceError) as caught:
        await call
    assert caught.value.reason == reason, caught.value.message
    return caught.value


def assert_fakes_match(*pairs: tuple[type, type], not_called: frozenset[str] = frozenset()) -> None:
    """Each fake offers every public async method of its real counterpart, with the same parameters, except those
    the code under test never calls (`not_called`)."""
    for fake, real in pairs:
        theirs, ours = public_async_methods(real), public_async_methods(fake)
        theirs = {name: sig for name, sig in theirs.items() if name not in not_called}
        assert set(theirs) <= set(ours), f"{fake.__name__} lacks {set(theirs) - set(ours)}"
        for name, signature in theirs.items():
            assert list(ours[name].parameters) == list(signature.parameters), f"{fake.__name__}.{name}"
