"""`python -m preprocessing SRC_DIR OUT_DIR ...` encodes an image folder (encode.py);
`python -m preprocessing import-repa DATA_DIR OUT_DIR` converts a REPA/SRA latent folder (import_repa.py);
`python -m preprocessing repa-features DATA_DIR ...` precomputes REPA's DINOv2 targets (repa_features.py)."""
import sys

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "import-repa":
        from .import_repa import main
        sys.exit(main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "repa-features":
        from .repa_features import main
        sys.exit(main(sys.argv[2:]))
    from .encode import main
    sys.exit(main(sys.argv[2:] if len(sys.argv) > 1 and sys.argv[1] == "encode" else sys.argv[1:]))
