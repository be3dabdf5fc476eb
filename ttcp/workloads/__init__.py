"""Workloads: cgroups and network namespaces, as the file system shows them (the
cgroup2 mount, inotify on cgroupfs, namespace files), resolved for the filter table."""
