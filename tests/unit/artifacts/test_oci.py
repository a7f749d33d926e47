import json
import tarfile

from kdeploy.artifacts.oci import ImageFile, ImageSpec, read_image_refs, write_image_archive


def test_image_archive_has_oci_layout_and_docker_manifest(tmp_path):
    src = tmp_path / "pause"
    src.write_bytes(b"\x7fELF fake")
    out = tmp_path / "pause.tar"
    digest = write_image_archive(ImageSpec("registry.k8s.io/pause:3.10.2", [ImageFile(src, "/pause")],
                                           entrypoint=["/pause"], user="65535:65535"), out)
    assert read_image_refs(out) == ["registry.k8s.io/pause:3.10.2"]
    with tarfile.open(out) as tf:
        names = set(tf.getnames())
        assert {"oci-layout", "index.json", "manifest.json"} <= names
        idx = json.load(tf.extractfile("index.json"))
        assert idx["manifests"][0]["digest"] == digest
        man = json.load(tf.extractfile("blobs/sha256/" + digest.split(":")[1]))
        cfg = json.load(tf.extractfile("blobs/sha256/" + man["config"]["digest"].split(":")[1]))
        assert cfg["config"]["Entrypoint"] == ["/pause"] and cfg["architecture"] == "amd64"
        layer = tf.extractfile("blobs/sha256/" + man["layers"][0]["digest"].split(":")[1])
        with tarfile.open(fileobj=layer) as lt:
            m = lt.getmember("pause")
            assert m.mode == 0o755 and lt.extractfile(m).read() == b"\x7fELF fake"
    # reproducible
    out2 = tmp_path / "again.tar"
    write_image_archive(ImageSpec("registry.k8s.io/pause:3.10.2", [ImageFile(src, "/pause")],
                                  entrypoint=["/pause"], user="65535:65535"), out2)
    assert out.read_bytes() == out2.read_bytes()
