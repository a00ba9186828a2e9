"""Test helpers that run the real thing: mosquitto, an asyncua server, tiny ONNX models, CLIs."""
