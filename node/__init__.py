"""msvlm-node: the DICOM service (receive, settle, group, infer, report, deliver)."""

__version__ = "0.1.0"
