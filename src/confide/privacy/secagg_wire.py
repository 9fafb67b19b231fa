"""Secure-aggregation messages <-> :class:`~confide.records.Control` records, so that serde stays generic.

One topic per step and direction (the protocol is described in :mod:`confide.privacy.secagg`; the round that
drives it in :mod:`confide.server.secure_round`):

================================  =============  =========================================================
topic                             direction      carries
================================  =============  =========================================================
``secagg/advertise``              server -> site :class:`SecAggSetup` (aggregation id, vector length, fixed point)
``secagg/advertisement``          site -> server :class:`~confide.privacy.secagg.Advertisement` (signed keys)
``secagg/roster``                 server -> site :class:`~confide.privacy.secagg.Roster` (with the revocation list)
``secagg/shares``                 site -> server the site's :class:`~confide.privacy.secagg.EncryptedShare` bundle
``secagg/train``                  server -> site :class:`SecureTrainIns` (the model, the config, the routed shares)
``secagg/masked``                 site -> server :class:`MaskedTrainRes` (the masked update; examples, metrics in clear)
``secagg/confirm``                server -> site :class:`~confide.privacy.secagg.SurvivorCheck` (survivors to sign)
``secagg/confirmed``              site -> server :class:`~confide.privacy.secagg.SurvivorSignature`
``secagg/unmask``                 server -> site :class:`~confide.privacy.secagg.UnmaskRequest` (with the signatures)
``secagg/unmasked``               site -> server :class:`~confide.privacy.secagg.UnmaskResponse`
================================  =============  =========================================================

Bytes travel as bytes fields (hex on the wire), lists of names as text tuples, field elements as 66-byte
big-endian blobs, the masked vector as a uint32 tensor. Unpacking checks every field's presence, type and size and
refuses anything else with a :class:`~confide.errors.PayloadError` naming the field; what the values mean (a key
on the roster, a share that opens) is for the secure-aggregation core to check.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

import numpy as np

from confide.errors import PayloadError
from confide.privacy.control_reader import ControlReader
from confide.privacy.secagg_identity import MAX_CERTIFICATE_BYTES, MAX_REVOCATION_LIST_BYTES, MAX_SIGNATURE_BYTES
from confide.privacy.secagg_math import _SHARE_CIPHERTEXT_BYTES, FIELD_BYTES, FIELD_PRIME, NONCE_BYTES
from confide.privacy.secagg_messages import (
    KEY_BYTES,
    Advertisement,
    EncryptedShare,
    MaskedInput,
    Roster,
    SurvivorCheck,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
)
from confide.records import Arrays, Config, Control, ControlValue, Metrics, Scalar, TrainIns

COMMITMENT_BYTES = 32
MASKED_ARRAY = "masked"
_CONFIG, _METRIC, _META = "config.", "metric.", "meta."


@dataclass(frozen=True)
class SecAggSetup:
    """Step 0, server -> site: start an aggregation of vectors of ``vector_length`` in this fixed point."""

    aggregation_id: str
    vector_length: int
    scale: float
    clip_range: float


@dataclass(frozen=True)
class SecureTrainIns:
    """Step 3, server -> site: train from ``train`` and mask the update with ``shares`` (routed to this site)."""

    train: TrainIns
    aggregation_id: str
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True)
class MaskedTrainRes:
    """Step 3, site -> server: the masked update; the number of examples, metrics and meta travel in clear."""

    masked: MaskedInput
    num_examples: int
    metrics: Metrics = field(default_factory=dict)
    meta: Config = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", MappingProxyType({k: float(v) for k, v in self.metrics.items()}))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))


TOPICS: dict[type, str] = {
    SecAggSetup: "secagg/advertise",
    Advertisement: "secagg/advertisement",
    Roster: "secagg/roster",
    SecureTrainIns: "secagg/train",
    MaskedTrainRes: "secagg/masked",
    SurvivorCheck: "secagg/confirm",
    SurvivorSignature: "secagg/confirmed",
    UnmaskRequest: "secagg/unmask",
    UnmaskResponse: "secagg/unmasked",
}
SHARES_TOPIC = "secagg/shares"
M = TypeVar(
    "M",
    SecAggSetup,
    Advertisement,
    Roster,
    SecureTrainIns,
    MaskedTrainRes,
    SurvivorCheck,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
)
Message = SecAggSetup | Advertisement | Roster | SurvivorCheck | SurvivorSignature | UnmaskRequest | UnmaskResponse
"""The messages :func:`pack` carries (those without arrays)."""


# --------------------------------------------------------------------------------------------------- pack


def _element(value: int) -> bytes:
    return value.to_bytes(FIELD_BYTES, "big")


def pack(round: int, message: Message) -> Control:
    """A control record carrying one of the messages without arrays."""
    fields: dict[str, ControlValue]
    if isinstance(message, SecAggSetup):
        fields = {
            "aggregation_id": message.aggregation_id,
            "vector_length": message.vector_length,
            "scale": message.scale,
            "clip_range": message.clip_range,
        }
    elif isinstance(message, Advertisement):
        fields = {
            "aggregation_id": message.aggregation_id,
            "sender": message.sender,
            "c_public": message.c_public,
            "s_public": message.s_public,
            "certificate": message.certificate,
            "signature": message.signature,
        }
    elif isinstance(message, Roster):
        fields = {
            "aggregation_id": message.aggregation_id,
            "threshold": message.threshold,
            "senders": message.names,
            "c_publics": tuple(ad.c_public for ad in message.advertisements),
            "s_publics": tuple(ad.s_public for ad in message.advertisements),
            "certificates": tuple(ad.certificate for ad in message.advertisements),
            "signatures": tuple(ad.signature for ad in message.advertisements),
            "revocation_list": message.revocation_list,
        }
    elif isinstance(message, SurvivorCheck | UnmaskRequest):
        fields = {
            "aggregation_id": message.aggregation_id,
            "survivors": tuple(message.survivors),
            "dropped": tuple(message.dropped),
        }
        if isinstance(message, UnmaskRequest):
            fields["signers"] = tuple(name for name, _ in message.signatures)
            fields["signatures"] = tuple(signature for _, signature in message.signatures)
    elif isinstance(message, SurvivorSignature):
        fields = {"aggregation_id": message.aggregation_id, "sender": message.sender, "signature": message.signature}
    else:
        fields = {
            "aggregation_id": message.aggregation_id,
            "sender": message.sender,
            "self_mask_names": tuple(name for name, _ in message.self_mask_shares),
            "self_mask_values": tuple(_element(value) for _, value in message.self_mask_shares),
            "mask_key_names": tuple(name for name, _ in message.mask_key_shares),
            "mask_key_values": tuple(_element(value) for _, value in message.mask_key_shares),
        }
    return Control(round=round, topic=TOPICS[type(message)], fields=fields)


def _share_fields(shares: Sequence[EncryptedShare]) -> dict[str, ControlValue]:
    return {
        "share_senders": tuple(share.sender for share in shares),
        "share_recipients": tuple(share.recipient for share in shares),
        "share_nonces": tuple(share.nonce for share in shares),
        "share_ciphertexts": tuple(share.ciphertext for share in shares),
    }


def pack_shares(round: int, aggregation_id: str, shares: Sequence[EncryptedShare]) -> Control:
    """A site's bundle of sealed shares, one for every roster member."""
    return Control(round=round, topic=SHARES_TOPIC, fields={"aggregation_id": aggregation_id, **_share_fields(shares)})


def pack_train(message: SecureTrainIns) -> Control:
    """The model (as the record's arrays, not copied), the training config and the shares routed to the site."""
    fields: dict[str, ControlValue] = {_CONFIG + key: value for key, value in message.train.config.items()}
    fields.update(aggregation_id=message.aggregation_id, **_share_fields(message.shares))
    return Control(round=message.train.round, topic=TOPICS[SecureTrainIns], fields=fields, arrays=message.train.arrays)


def pack_masked(round: int, message: MaskedTrainRes) -> Control:
    masked = message.masked
    fields: dict[str, ControlValue] = {
        "aggregation_id": masked.aggregation_id,
        "sender": masked.sender,
        "peers": tuple(masked.peers),
        "seed_commitment": masked.seed_commitment,
        "num_examples": message.num_examples,
    }
    fields.update({_METRIC + key: value for key, value in message.metrics.items()})
    fields.update({_META + key: value for key, value in message.meta.items()})
    arrays = Arrays.from_dict({MASKED_ARRAY: masked.masked})
    return Control(round=round, topic=TOPICS[MaskedTrainRes], fields=fields, arrays=arrays)


# ------------------------------------------------------------------------------------------------- unpack


def _shares(read: ControlReader, aggregation_id: str) -> tuple[EncryptedShare, ...]:
    senders, recipients = read.texts("share_senders"), read.texts("share_recipients")
    if len(senders) != len(recipients):
        raise PayloadError(f"{read.control.topic} lists {len(senders)} share senders and {len(recipients)} recipients")
    nonces = read.blobs("share_nonces", len(senders), NONCE_BYTES)
    ciphertexts = read.blobs("share_ciphertexts", len(senders), _SHARE_CIPHERTEXT_BYTES)
    return tuple(
        EncryptedShare(aggregation_id, *entry) for entry in zip(senders, recipients, nonces, ciphertexts, strict=True)
    )


def unpack_shares(control: Control) -> tuple[str, tuple[EncryptedShare, ...]]:
    """The aggregation id and the sealed shares of a ``secagg/shares`` message."""
    _expect_topic(control, SHARES_TOPIC)
    read = ControlReader(control)
    aggregation_id = read.text("aggregation_id")
    shares = _shares(read, aggregation_id)
    read.done()
    return aggregation_id, shares


def _elements(read: ControlReader, names_field: str, values_field: str) -> tuple[tuple[str, int], ...]:
    names = read.texts(names_field)
    values = [int.from_bytes(v, "big") for v in read.blobs(values_field, len(names), FIELD_BYTES)]
    if any(v >= FIELD_PRIME for v in values):
        raise PayloadError(f"{read.control.topic} field {values_field!r} holds a value outside the field")
    return tuple(zip(names, values, strict=True))


def _scalars(values: Mapping[str, ControlValue], what: str) -> dict[str, Scalar]:
    out: dict[str, Scalar] = {}
    for name, value in values.items():
        if not isinstance(value, bool | int | float | str):
            raise PayloadError(f"{what} {name!r} must be a scalar, got {type(value).__name__}")
        out[name] = value
    return out


def _expect_topic(control: Control, topic: str) -> None:
    if not isinstance(control, Control) or control.topic != topic:
        got = control.topic if isinstance(control, Control) else type(control).__name__
        raise PayloadError(f"expected a {topic} message, got {got}")


def _setup(read: ControlReader, aggregation_id: str) -> SecAggSetup:
    length = read.integer("vector_length", minimum=1)
    return SecAggSetup(aggregation_id, length, read.positive("scale"), read.positive("clip_range"))


def _advertisement(read: ControlReader, aggregation_id: str) -> Advertisement:
    sender = read.text("sender")
    keys = read.blob("c_public", KEY_BYTES), read.blob("s_public", KEY_BYTES)
    signed = read.data("certificate", MAX_CERTIFICATE_BYTES), read.data("signature", MAX_SIGNATURE_BYTES)
    return Advertisement(aggregation_id, sender, *keys, *signed)


def _roster(read: ControlReader, aggregation_id: str) -> Roster:
    threshold, senders = read.integer("threshold"), read.texts("senders")
    n = len(senders)
    columns = (
        read.blobs("c_publics", n, KEY_BYTES),
        read.blobs("s_publics", n, KEY_BYTES),
        read.blobs("certificates", n, MAX_CERTIFICATE_BYTES, exact=False),
        read.blobs("signatures", n, MAX_SIGNATURE_BYTES, exact=False),
    )
    ads = tuple(Advertisement(aggregation_id, *entry) for entry in zip(senders, *columns, strict=True))
    return Roster(aggregation_id, threshold, ads, read.data("revocation_list", MAX_REVOCATION_LIST_BYTES))


def _check(read: ControlReader, aggregation_id: str) -> SurvivorCheck:
    return SurvivorCheck(aggregation_id, read.texts("survivors"), read.texts("dropped"))


def _confirmation(read: ControlReader, aggregation_id: str) -> SurvivorSignature:
    return SurvivorSignature(aggregation_id, read.text("sender"), read.data("signature", MAX_SIGNATURE_BYTES))


def _request(read: ControlReader, aggregation_id: str) -> UnmaskRequest:
    survivors, dropped, signers = read.texts("survivors"), read.texts("dropped"), read.texts("signers")
    signatures = read.blobs("signatures", len(signers), MAX_SIGNATURE_BYTES, exact=False)
    return UnmaskRequest(aggregation_id, survivors, dropped, tuple(zip(signers, signatures, strict=True)))


def _response(read: ControlReader, aggregation_id: str) -> UnmaskResponse:
    sender = read.text("sender")
    b_shares = _elements(read, "self_mask_names", "self_mask_values")
    return UnmaskResponse(aggregation_id, sender, b_shares, _elements(read, "mask_key_names", "mask_key_values"))


def _train(read: ControlReader, aggregation_id: str) -> SecureTrainIns:
    read.prefixes = (_CONFIG,)
    shares = _shares(read, aggregation_id)
    config = _scalars(read.prefixed(_CONFIG), "config entry")
    read.arrays_allowed = True
    control = read.control
    return SecureTrainIns(TrainIns(control.round, control.arrays, config), aggregation_id, shares)


def _masked(read: ControlReader, aggregation_id: str) -> MaskedTrainRes:
    read.prefixes = (_METRIC, _META)
    sender, peers = read.text("sender"), read.texts("peers")
    commitment = read.blob("seed_commitment", COMMITMENT_BYTES)
    examples = read.integer("num_examples")
    metrics: dict[str, float] = {}
    for name, value in read.prefixed(_METRIC).items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PayloadError(f"secagg/masked metric {name!r} must be a number, got {type(value).__name__}")
        metrics[name] = float(value)
    meta = _scalars(read.prefixed(_META), "meta entry")
    arrays = read.control.arrays
    if arrays.names() != (MASKED_ARRAY,):
        raise PayloadError(f"secagg/masked message must carry exactly one array, {MASKED_ARRAY!r}")
    vector = arrays[MASKED_ARRAY]
    if vector.dtype != np.uint32 or vector.ndim != 1:
        raise PayloadError(f"secagg/masked array must be a flat uint32 vector, got {vector.dtype} {vector.shape}")
    read.arrays_allowed = True
    return MaskedTrainRes(MaskedInput(aggregation_id, sender, peers, commitment, vector), examples, metrics, meta)


_READERS: dict[type, Callable[[ControlReader, str], object]] = {
    SecAggSetup: _setup,
    Advertisement: _advertisement,
    Roster: _roster,
    SecureTrainIns: _train,
    MaskedTrainRes: _masked,
    SurvivorCheck: _check,
    SurvivorSignature: _confirmation,
    UnmaskRequest: _request,
    UnmaskResponse: _response,
}


def unpack(control: Control, kind: type[M]) -> M:
    """The message of type ``kind`` a control record carries, every field checked (else a PayloadError)."""
    _expect_topic(control, TOPICS[kind])
    read = ControlReader(control)
    message = _READERS[kind](read, read.text("aggregation_id"))
    read.done()
    if not isinstance(message, kind):  # pragma: no cover - _READERS maps each kind to its own reader
        raise TypeError(f"reader for {kind.__name__} returned a {type(message).__name__}")
    return message
