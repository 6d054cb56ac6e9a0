"""A headless client of a viser server: the browser's side of the protocol, for tests and benchmarks.

`ViewerClient` connects to a running `viser.ViserServer` over a websocket, decodes every frame the
server sends into plain message dicts, and sends what the browser sends when the user acts: camera
poses (`ViewerCameraMessage`, as when the user orbits the view), button clicks and new input values
(`GuiUpdateMessage`, as when the user clicks a button or edits a number, text or dropdown).

Wire format (viser 1.1.1, `viser/infra/_infra.py`, `_message_producer`):

* server -> client, one binary websocket frame per window of messages::

      [8 bytes]  D, size of the decompressed msgpack payload (little-endian uint64)
      [8 bytes]  C, size of the zstd-compressed msgpack payload (little-endian uint64)
      [C bytes]  zstd(msgpack({"messages": [...], "timestampSec": float, "binaryBufferLengths": [...]}))
      then, for each length n in binaryBufferLengths: zero padding up to an offset that is a
      multiple of 8 (offsets counted from the start of the frame), then n raw bytes.

  Each message is a dict with a "type" key (the Python class name, e.g. "BackgroundImageMessage")
  and the dataclass fields. numpy arrays in a message are replaced on the wire by placeholder dicts
  ``{"__binary_index": i, "dtype": "<f4"}`` that point into the binary buffers; `decode_frame`
  turns them back into 1-D numpy arrays of that dtype (the shape is not on the wire, as in the
  browser). `bytes` fields (e.g. the JPEG/PNG in `BackgroundImageMessage.rgb_data`) travel inline in
  the msgpack and decode to `bytes`. Tuples decode to lists.

* client -> server: ``msgspec.msgpack.encode(message_dict)``, one binary frame per message, where
  the dict has a "type" key and all the fields of that message class (decoded on the server by
  `Message.deserialize`).

* The websocket subprotocol must be ``"viser-v<viser version>"``; a server of another version closes
  the connection with code 1002.

Message names used here (checked against viser 1.1.1's `_messages.py` and its React client):

* `ViewerCameraMessage` (client -> server): wxyz, position, fov (vertical, radians), near, far,
  image_height, image_width, look_at, up_direction. The pose is T_world_camera in the OpenCV
  convention: +Z looks forward, +X right, +Y down. The server fires `on_client_connect` on a client's
  first camera message, then `client.camera.on_update` callbacks on every camera message.
* GUI elements are created by `Gui<Kind>Message` (e.g. `GuiButtonMessage`, `GuiNumberMessage`,
  `GuiSliderMessage`, `GuiTextMessage`, `GuiDropdownMessage`, `GuiCheckboxMessage`, ...), each with
  "uuid", "container_uuid", "props" (a dict with "label", "disabled", "visible", ...) and, for
  inputs, "value". `GuiUpdateMessage` {"uuid", "updates": {prop or "value": new value}} changes one
  (both directions); `GuiRemoveMessage` {"uuid"} removes one; `ResetGuiMessage` removes all.
* A button click is ``{"type": "GuiUpdateMessage", "uuid": <button uuid>, "updates": {"value": True}}``
  (viser's Button.tsx); an input change is the same with the new value (Generated.tsx), and a
  button-group click sends the chosen option as the value (ButtonGroup.tsx).
* `BackgroundImageMessage`: format ("jpeg" | "png"), rgb_data (bytes | None), depth_data.
* `ReplayDoneMessage` marks the end of the replay of the server's persistent state on connect.

Example::

    with ViewerClient(f"ws://127.0.0.1:{server.get_port()}") as client:
        n = client.count("BackgroundImageMessage")
        client.send_camera(position=(0, -3, 0), wxyz=look_at_wxyz((0, -3, 0), (0, 0, 0)), fov=1.0)
        image = decode_image(client.wait_for("BackgroundImageMessage", after=n))  # H x W x 3 uint8
        client.click("Render")
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import msgspec
import numpy as np
import websockets.exceptions
import websockets.sync.client
import zstandard
from PIL import Image
from websockets.typing import Subprotocol

__all__ = ["ViewerClient", "decode_frame", "decode_image", "look_at_wxyz", "viser_version"]

Message = dict[str, Any]
"""One decoded viser message: {"type": class name, <field>: value, ...}."""

_HEADER_BYTES = 16
_BUTTON_TYPES = frozenset({"GuiButtonMessage"})
_OPTION_TYPES = frozenset({"GuiDropdownMessage", "GuiButtonGroupMessage"})


def viser_version() -> str:
    """The installed viser's version (the server must run the same one to accept a client)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("viser")
    except PackageNotFoundError:  # e.g. a source checkout on sys.path
        import viser

        return str(viser.__version__)


def _restore_binary(obj: Any, buffers: Sequence[bytes]) -> Any:
    """Replace the binary placeholders ({"__binary_index": i, "dtype": str}) in a decoded message,
    recursively, by 1-D numpy arrays of that dtype viewing buffers[i] (read-only)."""
    if isinstance(obj, dict):
        if "__binary_index" in obj and "dtype" in obj:
            return np.frombuffer(buffers[int(obj["__binary_index"])], dtype=np.dtype(obj["dtype"]))
        return {k: _restore_binary(v, buffers) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore_binary(v, buffers) for v in obj]
    return obj


def decode_frame(data: bytes | bytearray | memoryview) -> list[Message]:
    """Decode one server -> client websocket frame into its messages, in order.

    Args:
        data: the frame's bytes (see the module docstring for the layout).
    Returns:
        the message dicts, each with a "type" key; binary placeholders are replaced by 1-D numpy
        arrays (dtype from the placeholder), `bytes` fields stay `bytes`, tuples come back as lists.
    Raises:
        ValueError: if the frame is truncated or inconsistent.
    """
    view = memoryview(data).cast("B")
    if view.nbytes < _HEADER_BYTES:
        raise ValueError(f"viser frame too short: {view.nbytes} bytes")
    decompressed_len = int.from_bytes(view[0:8], "little")
    compressed_len = int.from_bytes(view[8:16], "little")
    end = _HEADER_BYTES + compressed_len
    if end > view.nbytes:
        raise ValueError(f"viser frame truncated: msgpack payload needs {end} bytes, got {view.nbytes}")
    inner = zstandard.ZstdDecompressor().decompress(view[_HEADER_BYTES:end], max_output_size=decompressed_len)
    if len(inner) != decompressed_len:
        raise ValueError(f"viser frame: decompressed {len(inner)} bytes, header says {decompressed_len}")
    payload = msgspec.msgpack.decode(inner)
    buffers: list[bytes] = []
    offset = end
    for length in payload.get("binaryBufferLengths", ()):
        offset += (-offset) % 8
        if offset + length > view.nbytes:
            raise ValueError(f"viser frame truncated: binary buffer needs {offset + length} bytes, got {view.nbytes}")
        buffers.append(bytes(view[offset : offset + length]))
        offset += length
    messages: list[Message] = [_restore_binary(m, buffers) for m in payload["messages"]]
    return messages


def decode_image(msg: Message) -> np.ndarray:
    """Decode a `BackgroundImageMessage`'s rgb_data (JPEG or PNG bytes) into an (H, W, 3) uint8 array."""
    data = msg.get("rgb_data")
    if data is None:
        raise ValueError(f"{msg.get('type')} carries no rgb_data (the background was cleared)")
    raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    with Image.open(io.BytesIO(raw)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def look_at_wxyz(
    position: Sequence[float] | np.ndarray,
    target: Sequence[float] | np.ndarray = (0.0, 0.0, 0.0),
    up: Sequence[float] | np.ndarray = (0.0, 0.0, 1.0),
) -> tuple[float, float, float, float]:
    """The orientation (w, x, y, z) of an OpenCV camera at `position` looking at `target`.

    The camera's +Z points at the target, its +X is forward x up (to the right) and its +Y is
    +Z x +X (down in the image), so that `up` projects upward in the image. `up` must not be
    parallel to the viewing direction.
    """
    p = np.asarray(position, dtype=np.float64).reshape(3)
    z = np.asarray(target, dtype=np.float64).reshape(3) - p
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, dtype=np.float64).reshape(3))
    norm_x = np.linalg.norm(x)
    if norm_x < 1e-9:
        raise ValueError("look_at_wxyz: `up` is parallel to the viewing direction")
    x /= norm_x
    y = np.cross(z, x)
    return _matrix_to_wxyz(np.stack([x, y, z], axis=1))


def _matrix_to_wxyz(r: np.ndarray) -> tuple[float, float, float, float]:
    """A 3x3 rotation matrix -> unit quaternion (w, x, y, z) with w >= 0 (Shepperd's method)."""
    trace = float(np.trace(r))
    if trace > 0.0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = np.array([0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s])
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        s = 2.0 * np.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2])
        q = np.array([(r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s])
    elif r[1, 1] > r[2, 2]:
        s = 2.0 * np.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2])
        q = np.array([(r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s])
    else:
        s = 2.0 * np.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1])
        q = np.array([(r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s])
    q /= np.linalg.norm(q)
    if q[0] < 0.0:
        q = -q
    return (float(q[0]), float(q[1]), float(q[2]), float(q[3]))


def _to_wire(value: Any) -> Any:
    """Make a value msgpack-encodable as the browser would send it (numpy -> Python, tuples -> lists)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_to_wire(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_wire(v) for k, v in value.items()}
    return value


def _floats(value: Sequence[float] | np.ndarray, n: int, name: str) -> list[float]:
    out = [float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1)]
    if len(out) != n:
        raise ValueError(f"{name} must have {n} elements, got {len(out)}")
    return out


class ViewerClient:
    """A headless client of a viser server (the browser's side of the protocol): connects over a websocket,
    decodes what the server sends, and sends camera poses as the browser does when the user moves.

    A background thread reads and decodes every frame; the messages are kept in arrival order (all of
    them, for the client's lifetime) and can be read or waited for from any thread. The client also
    tracks the GUI the server has built (creations, updates, removals) so that `click` and
    `set_value` can find an element by its label, as a user would.

    Use as a context manager, or call `close()`; closing ends the reader thread.
    """

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        """Connect to a viser server.

        Args:
            url: the server's websocket address, e.g. "ws://127.0.0.1:8080".
            timeout: seconds allowed for the opening and closing handshakes, and the default wait of
                `wait_for`, `click` and `set_value`.
        Raises:
            OSError / websockets.exceptions.InvalidHandshake / TimeoutError: if it cannot connect.
        """
        self.url = url
        self.timeout = float(timeout)
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._all: list[Message] = []
        self._by_type: dict[str, list[Message]] = {}
        self._times: dict[str, list[float]] = {}
        self._gui: dict[str, Message] = {}  # uuid -> {"type", "uuid", "container_uuid", "props", ["value"]}
        self._closed = False
        self._closing = False
        self._error: BaseException | None = None
        self._ws = websockets.sync.client.connect(
            url,
            subprotocols=[Subprotocol(f"viser-v{viser_version()}")],
            compression=None,
            proxy=None,
            max_size=None,
            open_timeout=self.timeout,
            close_timeout=self.timeout,
        )
        self._reader = threading.Thread(target=self._read_loop, name=f"ViewerClient-reader({url})", daemon=True)
        self._reader.start()

    # ------------------------------------------------------------------ receiving

    def _read_loop(self) -> None:
        """Reader thread: decode every frame until the connection closes (or a frame fails to decode)."""
        try:
            for raw in self._ws:  # ends on a normal close, raises ConnectionClosedError on an abnormal one
                if isinstance(raw, str):
                    continue  # viser only sends binary frames
                received = time.perf_counter()
                batch = decode_frame(raw)
                with self._cond:
                    for msg in batch:
                        type_name = str(msg.get("type"))
                        self._all.append(msg)
                        self._by_type.setdefault(type_name, []).append(msg)
                        self._times.setdefault(type_name, []).append(received)
                        self._track_gui(type_name, msg)
                    self._cond.notify_all()
        except websockets.exceptions.ConnectionClosed as e:
            if not self._closing:
                self._error = e
        except BaseException as e:  # a decoding bug: surface it in wait_for, stop reading
            self._error = e
            try:
                self._ws.close()
            except Exception:
                pass
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    def _track_gui(self, type_name: str, msg: Message) -> None:
        """Mirror the server's GUI from its create / update / remove messages (called under the lock)."""
        if type_name == "ResetGuiMessage":
            self._gui.clear()
        elif type_name in ("GuiRemoveMessage", "GuiPanelRemoveMessage"):
            self._gui.pop(str(msg.get("uuid")), None)
        elif type_name == "GuiUpdateMessage":
            self._apply_gui_update(str(msg.get("uuid")), msg.get("updates") or {})
        elif type_name.startswith("Gui") and "uuid" in msg and isinstance(msg.get("props"), dict):
            uuid = str(msg["uuid"])
            self._gui.pop(uuid, None)  # re-created elements move to the end (creation order)
            element: Message = {"type": type_name, "uuid": uuid, "container_uuid": msg.get("container_uuid"),
                                "props": dict(msg["props"])}
            if "value" in msg:
                element["value"] = msg["value"]
            self._gui[uuid] = element

    def _apply_gui_update(self, uuid: str, updates: dict[str, Any]) -> None:
        element = self._gui.get(uuid)
        if element is None:
            return
        for key, value in updates.items():
            if key == "value":
                element["value"] = value
            else:
                element["props"][key] = value

    def messages(self, type_name: str | None = None) -> list[Message]:
        """All messages received so far, in arrival order (a copy of the list; the dicts are shared),
        optionally only those of one type, e.g. "BackgroundImageMessage" or "GuiButtonMessage"."""
        with self._cond:
            return list(self._all if type_name is None else self._by_type.get(type_name, ()))

    def timestamps(self, type_name: str) -> list[float]:
        """`time.perf_counter()` at the arrival of each message of `type_name` (aligned with
        `messages(type_name)`), for measuring frame rates."""
        with self._cond:
            return list(self._times.get(type_name, ()))

    def count(self, type_name: str) -> int:
        """How many messages of `type_name` have arrived so far."""
        with self._cond:
            return len(self._by_type.get(type_name, ()))

    def wait_for(self, type_name: str, after: int = 0, timeout: float | None = None) -> Message:
        """Block until the message of `type_name` with index `after` (0-based, counting that type only)
        has arrived, and return it.

        Typical use: ``n = client.count(T); <act>; msg = client.wait_for(T, after=n)`` waits for the
        first message of type T that arrives after the action (the server may coalesce several
        updates into one, so wait for the next one rather than for n + k).

        Raises:
            TimeoutError: if it has not arrived within `timeout` seconds (default: the client's timeout).
            ConnectionError: if the connection closed (or a frame failed to decode) before it arrived.
        """
        def poll() -> Message | None:
            received = self._by_type.get(type_name, [])
            return received[after] if len(received) > after else None

        def got() -> int:
            return len(self._by_type.get(type_name, []))

        return self._wait_until(
            poll,
            lambda: f"connection to {self.url} closed before {type_name} #{after} arrived ({got()} received)",
            lambda: f"no {type_name} #{after} from {self.url} ({got()} received)",
            timeout,
        )

    def _wait_until(self, poll: Callable[[], Any], closed: Callable[[], str], late: Callable[[], str],
                    timeout: float | None) -> Any:
        """Under the lock, wait until ``poll()`` returns something other than None and return it;
        ConnectionError(``closed()``) once the connection is closed, TimeoutError(``late()``) after
        ``timeout`` seconds (default: the client's timeout)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else float(timeout))
        with self._cond:
            while True:
                value = poll()
                if value is not None:
                    return value
                if self._closed:
                    raise ConnectionError(closed()) from self._error
                remaining = deadline - time.monotonic()
                if remaining <= 0.0:
                    raise TimeoutError(late())
                self._cond.wait(remaining)

    # ------------------------------------------------------------------ sending

    def send_message(self, msg: dict[str, Any]) -> None:
        """Send a raw client -> server message: a dict with "type" (a viser message class name) and all
        that class's fields. numpy values and tuples are converted to plain lists / scalars."""
        if "type" not in msg:
            raise ValueError("a viser message needs a 'type' key")
        data = msgspec.msgpack.encode(_to_wire(msg))
        with self._send_lock:
            self._ws.send(data)

    def send_camera(
        self,
        position: Sequence[float] | np.ndarray,
        wxyz: Sequence[float] | np.ndarray,
        fov: float,
        image_hw: tuple[int, int] = (480, 640),
        look_at: Sequence[float] | np.ndarray = (0.0, 0.0, 0.0),
        up: Sequence[float] | np.ndarray = (0.0, 0.0, 1.0),
        near: float = 0.01,
        far: float = 1000.0,
    ) -> None:
        """Send a `ViewerCameraMessage`, as the browser does when the user moves the view.

        Args:
            position: (3,) camera centre in world coordinates.
            wxyz: (4,) quaternion (w, x, y, z) of R_world_camera, OpenCV convention (+Z forward,
                +X right, +Y down); see `look_at_wxyz`. Sent as given (the browser sends unit ones).
            fov: vertical field of view in radians.
            image_hw: (height, width) of the viewport in pixels.
            look_at: (3,) orbit target in world coordinates.
            up: (3,) world up direction of the orbit controls.
            near, far: clipping distances.
        """
        self.send_message(
            {
                "type": "ViewerCameraMessage",
                "wxyz": _floats(wxyz, 4, "wxyz"),
                "position": _floats(position, 3, "position"),
                "fov": float(fov),
                "near": float(near),
                "far": float(far),
                "image_height": int(image_hw[0]),
                "image_width": int(image_hw[1]),
                "look_at": _floats(look_at, 3, "look_at"),
                "up_direction": _floats(up, 3, "up"),
            }
        )

    # ------------------------------------------------------------------ GUI

    def gui_elements(self) -> list[Message]:
        """The GUI elements currently on the client, in creation order: copies of
        {"type": "Gui<Kind>Message", "uuid", "container_uuid", "props": {...}, "value" (inputs only)}
        with the server's later updates applied."""
        with self._cond:
            return [{**e, "props": dict(e["props"])} for e in self._gui.values()]

    def gui_element(self, label: str, types: frozenset[str] | None = None, timeout: float | None = None) -> Message:
        """The GUI element whose props label (or uuid) is `label`, waiting up to `timeout` seconds
        (default: the client's timeout) for the server to create it.

        Args:
            label: the element's label as shown to the user, or its uuid.
            types: if given, only elements created by these message types (e.g. {"GuiButtonMessage"}).
        Returns:
            a copy of the element (see `gui_elements`).
        Raises:
            TimeoutError: if no such element appears in time.
            ConnectionError: if the connection closed before it appeared.
            LookupError: if several current elements match (pass the uuid instead).
        """
        return self._find_gui(label, lambda e: types is None or e["type"] in types, timeout)

    def _find_gui(self, label: str, accept: Callable[[Message], bool], timeout: float | None) -> Message:
        def poll() -> Message | None:
            found = [
                e
                for e in self._gui.values()
                if (e["props"].get("label") == label or e["uuid"] == label) and accept(e)
            ]
            if len(found) > 1:
                raise LookupError(f"{len(found)} GUI elements match {label!r}: {[e['uuid'] for e in found]}")
            return {**found[0], "props": dict(found[0]["props"])} if found else None

        def labels() -> list:
            return [e["props"].get("label") for e in self._gui.values()]

        return self._wait_until(
            poll,
            lambda: f"connection to {self.url} closed; no GUI element {label!r}; labels: {labels()}",
            lambda: f"no suitable GUI element labelled {label!r}; labels: {labels()}",
            timeout,
        )

    def click(self, label: str, timeout: float | None = None, force: bool = False) -> None:
        """Click the button labelled `label` (or with that uuid), as the browser does: send
        ``GuiUpdateMessage(uuid, {"value": True})``. The server then runs its `on_click` callbacks
        (asynchronously, in its thread pool).

        Raises:
            TimeoutError / ConnectionError / LookupError: see `gui_element` (only buttons count).
            RuntimeError: if the button is disabled or hidden (the user could not click it), unless `force`.
        """
        element = self.gui_element(label, types=_BUTTON_TYPES, timeout=timeout)
        props = element["props"]
        if not force and (props.get("disabled") or not props.get("visible", True)):
            raise RuntimeError(f"button {label!r} is disabled or hidden: {props}")
        self.send_message({"type": "GuiUpdateMessage", "uuid": element["uuid"], "updates": {"value": True}})

    def set_value(self, label: str, value: Any, timeout: float | None = None) -> None:
        """Set the value of the input labelled `label` (or with that uuid) (number, slider, text,
        checkbox, dropdown, vector, rgb, button group, ...), as the browser does: send
        ``GuiUpdateMessage(uuid, {"value": value})`` and update the local copy. The server casts the
        value to its current value's type and runs `on_update` callbacks if it changed.

        Raises:
            TimeoutError / ConnectionError / LookupError: see `gui_element` (only elements with a value count).
            ValueError: for a dropdown / button group, if `value` is not one of its options.
        """
        element = self._find_gui(label, lambda e: "value" in e and e["type"] not in _BUTTON_TYPES, timeout)
        wire_value = _to_wire(value)
        if element["type"] in _OPTION_TYPES and wire_value not in list(element["props"].get("options", ())):
            raise ValueError(f"{wire_value!r} is not an option of {label!r}: {element['props'].get('options')}")
        with self._cond:
            self._apply_gui_update(element["uuid"], {"value": wire_value})
        self.send_message({"type": "GuiUpdateMessage", "uuid": element["uuid"], "updates": {"value": wire_value}})

    # ------------------------------------------------------------------ lifetime

    @property
    def closed(self) -> bool:
        """Whether the connection is closed (by `close()`, by the server, or after a decoding error)."""
        with self._cond:
            return self._closed

    def close(self) -> None:
        """Close the connection (closing handshake bounded by the client's timeout) and join the
        reader thread. Idempotent."""
        self._closing = True
        try:
            self._ws.close()
        finally:
            if self._reader is not threading.current_thread():
                self._reader.join(self.timeout)

    def __enter__(self) -> ViewerClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
