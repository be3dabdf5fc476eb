"""A private containerd for the tests (daemon.py) and an image for it made without a registry
or dockerd (oci_image.py), both removed completely afterwards."""
