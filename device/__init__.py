"""On-device facial-emotion recognition: camera -> MediaPipe faces -> LiteRT classifier -> overlay and CSV."""
