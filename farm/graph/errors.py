"""ComfyUI's validation error objects: {"type", "message", "details", "extra_info"} (spec §5)."""

from __future__ import annotations


def error(type_: str, message: str, details: str = "", extra_info: dict | None = None) -> dict:
    return {"type": type_, "message": message, "details": details, "extra_info": extra_info or {}}


def no_prompt() -> dict:
    return error("no_prompt", "No prompt provided", "No prompt provided")


def invalid_prompt(details: str) -> dict:
    return error("invalid_prompt", "Invalid prompt", details)


def invalid_prompt_id(details: str) -> dict:
    return error("invalid_prompt_id", "prompt_id must be a valid UUID", details)


def prompt_id_conflict(prompt_id: str) -> dict:
    return error(
        "prompt_id_conflict",
        "prompt_id is already used by a different prompt",
        f"prompt_id {prompt_id} was accepted earlier with another request body; use a new prompt_id",
        {"prompt_id": prompt_id},
    )


def missing_node_type(node_id: str, class_type, title) -> dict:
    if class_type is None:
        message = "Cannot execute because a node is missing the class_type property."
    else:
        message = f"Cannot execute because node {class_type} does not exist."
    return error(
        "missing_node_type", message, f"Node ID '#{node_id}'",
        {"node_id": node_id, "class_type": class_type, "node_title": title or class_type},
    )


def prompt_no_outputs() -> dict:
    return error("prompt_no_outputs", "Prompt has no outputs")


def outputs_failed(details: str) -> dict:
    return error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details)


def required_input_missing(name: str) -> dict:
    return error("required_input_missing", "Required input is missing", name, {"input_name": name})


def bad_linked_input(name: str, config, value) -> dict:
    return error(
        "bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]", name,
        {"input_name": name, "input_config": config, "received_value": value},
    )


def return_type_mismatch(name: str, config, received, expected, link) -> dict:
    return error(
        "return_type_mismatch", "Return type mismatch between linked nodes",
        f"{name}, received_type({received}) mismatch input_type({expected})",
        {"input_name": name, "input_config": config, "received_type": received, "linked_node": link},
    )


def inner_exception(name: str, config, link, exception_type: str, message: str, trace=None) -> dict:
    return error(
        "exception_during_inner_validation", "Exception when validating inner node", message,
        {"input_name": name, "input_config": config, "exception_message": message,
         "exception_type": exception_type, "traceback": list(trace or []), "linked_node": link},
    )


def exception_during_validation(exception_type: str, message: str, trace) -> dict:
    return error(
        "exception_during_validation", "Exception when validating node", message,
        {"exception_type": exception_type, "traceback": list(trace)},
    )


def invalid_input_type(name: str, config, expected: str, value, exception: Exception) -> dict:
    return error(
        "invalid_input_type", f"Failed to convert an input value to a {expected} value",
        f"{name}, {value}, {exception}",
        {"input_name": name, "input_config": config, "received_value": value, "exception_message": str(exception)},
    )


def value_smaller_than_min(name: str, config, value, minimum) -> dict:
    return error(
        "value_smaller_than_min", f"Value {value} smaller than min of {minimum}", name,
        {"input_name": name, "input_config": config, "received_value": value},
    )


def value_bigger_than_max(name: str, config, value, maximum) -> dict:
    return error(
        "value_bigger_than_max", f"Value {value} bigger than max of {maximum}", name,
        {"input_name": name, "input_config": config, "received_value": value},
    )


def value_not_in_list(name: str, config, value, choices: list) -> dict:
    listed = f"(list of length {len(choices)})" if len(choices) > 20 else str(choices)
    return error(
        "value_not_in_list", "Value not in list", f"{name}: '{value}' not in {listed}",
        {"input_name": name, "input_config": None if len(choices) > 20 else config, "received_value": value},
    )


def custom_validation_failed(name: str, message: str) -> dict:
    return error(
        "custom_validation_failed", "Custom validation failed for node", f"{name} - {message}",
        {"input_name": name},
    )


def dependency_cycle(node_id: str, cycle: list[str], path: str, length: int | None = None) -> dict:
    """`cycle` may be the first nodes of a long cycle only; then `length` says how long it is.
    The list is kept, not copied: every node of a cycle shares it (validation hands one list per
    cycle), and a graph of 10,000 cycles would otherwise copy it 10,000 times."""
    extra_info = {"node_id": node_id, "cycle_nodes": cycle}
    if length is not None and length > len(cycle):
        extra_info["cycle_length"] = length
    return error("dependency_cycle", "Dependency cycle detected", path, extra_info)


def invalid_input_value(name: str, details: str) -> dict:
    """A value the farm cannot store or answer with (NaN, Infinity, NUL, too deep): not ComfyUI's."""
    return error("invalid_input_value", "Input value cannot be accepted", f"{name}: {details}", {"input_name": name})
