"""Write or check manifest.json of a built artifact directory (the layout of docs/artifacts.md).

    python3 -m kdeploy.artifacts.build.mkmanifest --write DIR --k8s-version 1.37.2 --arch amd64
    python3 -m kdeploy.artifacts.build.mkmanifest --check DIR
        exit 0 when every file matches the manifest, every file of the catalog
        (bin/, cni/, lib/, images/, tools/kube-bench/) is listed and the images carry the
        build's names (built_image_refs)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kdeploy.artifacts.catalog import (KUBE_BENCH_BENCHMARK, KUBE_BENCH_VERSION, build_versions_for,
                                      built_image_refs, file_specs, kube_bench_files)
from kdeploy.artifacts.layout import read_manifest, verify_dir, write_manifest
from kdeploy.errors import KdeployError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", metavar="DIR")
    g.add_argument("--check", metavar="DIR")
    ap.add_argument("--k8s-version")
    ap.add_argument("--arch", default="amd64")
    a = ap.parse_args(argv)
    try:
        if a.check:
            doc = read_manifest(Path(a.check))
            # a set built before the catalog gained a file is not complete (the build then
            # rebuilds only the components whose stamps miss it)
            verify_dir(Path(a.check), kubernetes_version=doc.get("kubernetesVersion"),
                       required=[s.relpath for s in file_specs()] + kube_bench_files())
            # a set built when the images had other names is stale (the images stamp rebuilds them)
            want = built_image_refs(build_versions_for(doc["kubernetesVersion"]))
            if doc.get("images") != want:
                print(f"{a.check}: image names {doc.get('images')} are not the build's {want}",
                      file=sys.stderr)
                return 1
            print(f"{a.check}: {len(doc['files'])} files match manifest.json")
            return 0
        if not a.k8s_version:
            ap.error("--write needs --k8s-version")
        v = build_versions_for(a.k8s_version)
        comps = {k: val for k, val in v.as_dict().items() if not k.endswith("_image")}
        images = built_image_refs(v)
        if all((Path(a.write) / rel).is_file() for rel in kube_bench_files()):
            comps["kube_bench"] = f"{KUBE_BENCH_VERSION}/{KUBE_BENCH_BENCHMARK}"
        doc = write_manifest(Path(a.write), kubernetes_version=a.k8s_version, arch=a.arch,
                             source="built-from-go-modules", components=comps, images=images)
        print(f"{a.write}/manifest.json: {len(doc['files'])} files")
        return 0
    except KdeployError as e:
        print(f"error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
