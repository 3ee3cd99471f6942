"""The Fabric Master: PacketIns from PP nodes → SC groups → rules cached and installed."""
