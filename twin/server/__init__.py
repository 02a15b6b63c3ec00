"""The real FHIR R4 API that behaves like FUT (docs/API.md)."""
