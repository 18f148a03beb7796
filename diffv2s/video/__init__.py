"""Video front end: decode (PyAV, 25 fps), face landmarks (mediapipe), mouth ROI (AV-HuBERT recipe), mux.

Nothing is imported here: `decode` must stay importable without torch, cv2 or mediapipe (the gateway
uses `decode.probe_video`), so import the submodules directly.
"""
