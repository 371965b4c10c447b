"""The error tree: every error pickles with its attributes and says what to do."""

from __future__ import annotations

import inspect
import pickle

import pytest

from tokenfleet import errors

ALL = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.TokenfleetError)
]


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_every_error_round_trips_through_pickle_with_its_attributes(cls: type) -> None:
    exc = cls("something went wrong", retry_after=3.5, field="config.login")
    clone = pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own bytes
    assert type(clone) is cls
    assert clone.message == "something went wrong"
    assert clone.retry_after == 3.5 and clone.field == "config.login"
    assert str(clone) == "something went wrong"


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_every_concrete_error_belongs_to_exactly_one_branch(cls: type) -> None:
    if cls in (errors.TokenfleetError, errors.RetryLater, errors.GiveUp, errors.FixConfig):
        return
    branches = [
        b for b in (errors.RetryLater, errors.GiveUp, errors.FixConfig) if issubclass(cls, b)
    ]
    assert len(branches) == 1
    assert cls.retryable is (branches[0] is errors.RetryLater)


def test_every_error_class_is_drawn_in_the_module_docstring() -> None:
    doc = errors.__doc__ or ""
    for cls in ALL:
        assert cls.__name__ in doc
