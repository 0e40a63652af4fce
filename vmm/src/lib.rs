//! The KVM monitor: memory, vCPUs, Linux boot, AVIO (virtio-pci) and VIO (emulated) devices.
