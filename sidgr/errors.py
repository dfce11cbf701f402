"""One exception type for bad user input, so the CLI can print it as a single line."""


class InputError(ValueError):
    """Bad input: the message names the file, the field and the offending value."""


def input_error(source, field: str, value, problem: str) -> InputError:
    """Build an InputError whose message reads `<source>: <field>=<value>: <problem>`."""
    return InputError(f"{source}: {field}={value!r}: {problem}")
