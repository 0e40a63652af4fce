//! DHCPv4 + proxyDHCP with PXE options, TFTP and HTTP boot; which client gets which boot files.
