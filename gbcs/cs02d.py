"""CS02d Update Device Certificate on Device; the classes live in gbcs.cs02e (re-exported here)."""

from gbcs.cs02e import UpdateDeviceCertificateCommand, UpdateDeviceCertificateResponse

__all__ = ["UpdateDeviceCertificateCommand", "UpdateDeviceCertificateResponse"]
