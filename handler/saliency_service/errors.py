"""Errors that a client caused, each with a stable machine-readable code and an HTTP status."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RequestError(Exception):
    """A request the service refuses: answered with ``status`` and ``{"error": {code, message}}``.

    ``code`` is stable and meant for programs; ``message`` is meant for people.
    """

    code: str
    message: str
    status: int = 400

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def to_json(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


def empty_body() -> RequestError:
    return RequestError("empty_body", "The request has no body: send an image or a JSON object.")


def invalid_json(detail: str) -> RequestError:
    return RequestError("invalid_json", f"The body is not a valid JSON object: {detail}.")


def invalid_base64() -> RequestError:
    return RequestError("invalid_base64", "The 'image' field is not valid base64.")


def missing_image() -> RequestError:
    return RequestError(
        "missing_image",
        "No image: send it as the body, as the JSON field "
        "'image' (base64) or as the multipart field 'image'.",
    )


def unknown_option(name: str, known: list[str]) -> RequestError:
    return RequestError(
        "unknown_option", f"Unknown option {name!r:.60}; known options: {', '.join(sorted(known))}."
    )


def invalid_option(name: str, detail: str) -> RequestError:
    return RequestError("invalid_option", f"Option {name!r:.60} {detail}.")


def unknown_label(label: str, num_classes: int = 1000, imagenet: bool = True) -> RequestError:
    if imagenet:
        return RequestError(
            "unknown_label",
            f"{label!r:.60} is not an ImageNet class name; send an index "
            "0-999 or one of torchvision's ImageNet category names.",
        )
    return RequestError(
        "unknown_label",
        f"{label!r:.60} is not a class name of this model; send an index "
        f"0-{num_classes - 1} or one of its class names.",
    )


def ambiguous_label(label: str, indices: list[int], imagenet: bool = True) -> RequestError:
    classes = "ImageNet classes" if imagenet else "classes of this model"
    return RequestError(
        "ambiguous_label",
        f"{label!r:.60} names several {classes} {indices}: send the index instead.",
    )


def invalid_image(detail: str) -> RequestError:
    return RequestError("invalid_image", f"The data is not an image that can be decoded: {detail}.")


def image_too_large(pixels: int, limit: int) -> RequestError:
    return RequestError(
        "image_too_large", f"The image has {pixels} pixels; the limit is {limit}.", status=413
    )


def payload_too_large(size: int, limit: int) -> RequestError:
    return RequestError(
        "payload_too_large", f"The image data is {size} bytes; the limit is {limit}.", status=413
    )


@dataclass(frozen=True)
class Redirect(RequestError):
    """Not an error of the client's: the request is answered by another model, at ``location``.

    HTTP clients that follow redirects (307 keeps the method, the body and, on the same host,
    the Authorization header) resend it there by themselves; gRPC, which has no redirects,
    receives the body and its message.
    """

    status: int = 307
    location: str = ""

    def to_json(self) -> dict:
        body = super().to_json()
        body["error"]["location"] = self.location  # for gRPC clients: where to send it
        return body


def batch_full(passes: int, budget: int, retry_after: int) -> RequestError:
    return RequestError(
        "busy",
        f"This request ({passes} passes through the network) did not fit in the batch being "
        f"computed (at most {budget} passes, so that a batch ends within the response timeout)"
        f"; retry in {retry_after} s.",
        status=503,
    )


def served_elsewhere(method: str, passes: int, limit: int, model: str) -> Redirect:
    return Redirect(
        "served_by_another_model",
        f"Method {method!r} costs {passes} passes through the network; this model answers "
        f"requests of at most {limit}, so that cheap requests never queue behind expensive "
        f"ones. Send it to /predictions/{model}.",
        location=f"/predictions/{model}",
    )
