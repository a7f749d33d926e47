"""kdeploy.pki: the cluster's certificates, keys, kubeconfigs and encryption config.

    pki = ensure_pki(cluster)          # issue what is missing/changed/expiring, reuse the rest
    pki.files_for(host)                # -> [File] exactly what that host needs
    pki.admin_kubeconfig()             # cluster-admin kubeconfig for the user
    pki.certificates()                 # -> [CertInfo] for `kdeploy certs check`
"""
from kdeploy.pki.identities import Identity, Place, Table, build_table
from kdeploy.pki.store import PKI, CertInfo, PKIError, default_state_dir, ensure_pki, load_pki

__all__ = ["PKI", "CertInfo", "Identity", "PKIError", "Place", "Table", "build_table",
           "default_state_dir", "ensure_pki", "load_pki"]
