"""SMETS2 device simulator for vdno tests and the demo (imports neither grpc nor pkcs11).

- simulator.device: SimulatedDevice (CS02b modes 3 and 8, CS02a, CS02e)
- simulator.profile: DeviceProfile, load_profile, save_profile, cell constants
- simulator.lab: make_device_profile / write_tray from a lab PKI
- vdno.device_frames: the tray's TCP frame protocol (encode_frame, read_frame, OP_* / RESP_*)
- simulator.tray: Tray, TrayServer
- simulator.cli: `vdno-sim serve`
"""
