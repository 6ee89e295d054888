"""Storage: the Files API, volumes, request paths, cloud backends, pre-signed URLs, quota, sweep."""
