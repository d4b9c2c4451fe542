"""ADTS headers for raw AAC frames, built from the AudioSpecificConfig.

MPEG-TS carries AAC as ADTS frames, and FFmpeg's MP4 muxer reads the
AudioSpecificConfig back from the first ADTS header, so both the HLS
segments and the clips wrap each raw AAC frame in one of these headers.
"""

from __future__ import annotations

from dataclasses import dataclass

# ISO/IEC 14496-3, Table 1.18: the sampling frequency index of each rate.
_SAMPLING_RATES = (
    96_000, 88_200, 64_000, 48_000, 44_100, 32_000,
    24_000, 22_050, 16_000, 12_000, 11_025, 8_000, 7_350,
)  # fmt: skip
_ADTS_HEADER_BYTES = 7
_ADTS_MAX_FRAME_BYTES = (1 << 13) - 1


class AacConfigError(ValueError):
    """An AudioSpecificConfig that ADTS cannot express."""


@dataclass(frozen=True)
class AdtsFramer:
    """Wraps raw AAC frames of one stream in ADTS headers.

    ADTS has two bits for the audio object type and no escape codes, so
    only AAC Main, LC, SSR and LTP streams at the standard sampling rates
    with at most seven channels fit.
    """

    object_type: int
    frequency_index: int
    channel_configuration: int

    @classmethod
    def from_config(cls, config: bytes) -> AdtsFramer:
        """Read the object type, rate and channels of an AudioSpecificConfig."""
        if len(config) < 2:
            raise AacConfigError(
                f"AAC AudioSpecificConfig {config.hex() or '(empty)'} is too short: "
                "the encoder must give at least 2 bytes"
            )
        bits = int.from_bytes(config[:2], "big")
        object_type = bits >> 11
        frequency_index = (bits >> 7) & 0x0F
        channel_configuration = (bits >> 3) & 0x0F
        if not 1 <= object_type <= 4:
            raise AacConfigError(
                f"AAC object type {object_type} in {config.hex()} has no ADTS form: "
                "encode AAC-LC"
            )
        if frequency_index >= len(_SAMPLING_RATES):
            raise AacConfigError(
                f"AAC sampling frequency index {frequency_index} in {config.hex()} "
                "is not a standard rate: use one of "
                f"{', '.join(str(rate) for rate in _SAMPLING_RATES)} Hz"
            )
        if not 1 <= channel_configuration <= 7:
            raise AacConfigError(
                f"AAC channel configuration {channel_configuration} in "
                f"{config.hex()} has no ADTS form: use mono or stereo"
            )
        return cls(object_type, frequency_index, channel_configuration)

    def frame(self, payload: bytes) -> bytes:
        """Return ``payload`` with its 7-byte ADTS header (no CRC) in front."""
        length = len(payload) + _ADTS_HEADER_BYTES
        if length > _ADTS_MAX_FRAME_BYTES:
            raise AacConfigError(
                f"AAC frame of {len(payload)} bytes is too long for ADTS "
                f"(at most {_ADTS_MAX_FRAME_BYTES - _ADTS_HEADER_BYTES})"
            )
        profile = self.object_type - 1
        header = bytes(
            (
                0xFF,
                # Sync word end, MPEG-4, layer 0, no CRC.
                0xF1,
                (profile << 6)
                | (self.frequency_index << 2)
                | (self.channel_configuration >> 2),
                ((self.channel_configuration & 0x03) << 6) | (length >> 11),
                (length >> 3) & 0xFF,
                # Buffer fullness 0x7FF means a variable bit rate.
                ((length & 0x07) << 5) | 0x1F,
                0xFC,
            )
        )
        return header + payload
