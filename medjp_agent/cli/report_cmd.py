"""Placeholder until this command group lands."""


def register(app) -> None:  # noqa: ANN001
    return None
