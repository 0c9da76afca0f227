#!/usr/bin/env bash
# A single-node Kubernetes cluster on this machine, from upstream binaries, for the tests that apply
# deploy/kubernetes/ and the Helm chart to a real API server and kubelet (tests/test_kubernetes_cluster.py).
# Run as root. No systemd is needed: every daemon is started here and stopped by its pid.
#
#   cluster.sh up            start it; print the kubeconfig's path (KUBECONFIG for kubectl and helm)
#   cluster.sh load IMAGE... copy images from podman's store into the node's containerd, under the
#                            names Kubernetes gives them (otelproc:latest is docker.io/library/otelproc:latest);
#                            registry.k8s.io/pause:3.10 among them, every pod's sandbox
#   cluster.sh down          stop it and remove what `up` made: processes, containers, mounts, network
#                            devices, iptables rules, files; the machine is as it was before `up`
#   cluster.sh kubectl ARGS  kubectl on this cluster
#
# What runs, and from where:
#   etcd 3.4            Debian's etcd-server package, unpacked (cluster/fetch-etcd.sh)
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl
#                       built from k8s.io/kubernetes (cluster/build-kubernetes.sh)
#   CoreDNS             built from github.com/coredns/coredns (cluster/build-coredns.sh); on the node,
#                       as the kubelet's clusterDNS
#   containerd, runc, CNI plugins   Debian's packages (install.sh --test)
# The node's address is 10.245.1.1, the address of the pods' bridge (otelk8s-br0, made by `up` before
# any pod, so that it is there from the start): the API server, the kubelet and CoreDNS listen there,
# where pods reach them (their gateway) and so does this host, on no address of the host's own network.
# Pods get 10.245.1.0/24 on that bridge, Services 10.96.0.0/16 (kube-proxy, iptables mode). The node is
# named otelproc-node.
# The kubelet's root is the default /var/lib/kubelet, so that the seccomp profile goes where
# docs/deployment.md tells users to put it (/var/lib/kubelet/seccomp/otelproc.json; the tests do that).
# Credentials: one CA; the API server's serving certificate; one client certificate (system:masters)
# that every component and kubectl use. A test cluster's shortcut: a real one gives each its own.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)

STATE=/var/lib/otelproc-k8s     # etcd's data, certificates, configs, containerd's images, logs
RUN=/run/otelproc-k8s           # sockets and pid files
KUBELET_ROOT=/var/lib/kubelet
NODE=otelproc-node
NODE_IP=10.245.1.1
BRIDGE=otelk8s-br0
POD_CIDR=10.245.1.0/24
SERVICE_CIDR=10.96.0.0/16
ETCD_CLIENT=http://127.0.0.1:12379
ETCD_PEER=http://127.0.0.1:12380
API=https://$NODE_IP:6443
KUBECONFIG_FILE=$STATE/admin.kubeconfig
CONTAINERD_SOCKET=$RUN/containerd.sock
SANDBOX_IMAGE=registry.k8s.io/pause:3.10
# The daemons, in the order `up` starts them (`down` stops them in reverse).
DAEMONS=(etcd containerd kube-apiserver kube-controller-manager kube-scheduler kube-proxy coredns kubelet)

note() { echo "cluster.sh: $*" >&2; }
fail() { note "$*"; exit 1; }

kubectl() { "$K8S/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }
ctr() { command ctr --address "$CONTAINERD_SOCKET" --namespace k8s.io "$@"; }

binaries() {
    K8S=$("$HERE/build-kubernetes.sh" --print-path) || fail "run deploy/kubernetes/cluster/build-kubernetes.sh (./install.sh --test does)"
    COREDNS=$("$HERE/build-coredns.sh" --print-path) || fail "run deploy/kubernetes/cluster/build-coredns.sh (./install.sh --test does)"
    ETCD=$("$HERE/fetch-etcd.sh" --print-path) || fail "run deploy/kubernetes/cluster/fetch-etcd.sh (./install.sh --test does)"
    local command
    for command in containerd runc iptables-save iptables-restore openssl; do
        command -v "$command" >/dev/null || fail "no $command: ./install.sh --test installs it"
    done
    [[ -x /usr/lib/cni/bridge ]] || fail "no CNI plugins in /usr/lib/cni: ./install.sh --test installs containernetworking-plugins"
}

# start NAME COMMAND...: a daemon in a session of its own, its output in $STATE/logs/NAME.log.
start() {
    local name=$1
    shift
    setsid "$@" >"$STATE/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$RUN/$name.pid"
}

# wait_for WHAT SECONDS COMMAND...: until COMMAND succeeds; fails with the log of the last daemon started.
wait_for() {
    local what=$1 seconds=$2 name
    shift 2
    for ((i = 0; i < seconds * 5; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        for name in "${DAEMONS[@]}"; do
            if [[ -f $RUN/$name.pid ]] && ! kill -0 "$(cat "$RUN/$name.pid")" 2>/dev/null; then
                tail -n 20 "$STATE/logs/$name.log" >&2
                fail "$name exited (its log's end above)"
            fi
        done
        sleep 0.2
    done
    fail "no $what after $seconds s (logs in $STATE/logs)"
}

certificates() {
    local pki=$STATE/pki
    mkdir -p "$pki"
    (
        cd "$pki"
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 7 -subj /CN=otelproc-k8s-ca 2>/dev/null
        printf '%s\n' "subjectAltName=IP:$NODE_IP,IP:127.0.0.1,IP:${SERVICE_CIDR%.0/16}.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" \
            "extendedKeyUsage=serverAuth" >apiserver.ext
        openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj /CN=kube-apiserver 2>/dev/null
        openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 7 -extfile apiserver.ext -out apiserver.crt 2>/dev/null
        echo "extendedKeyUsage=clientAuth" >admin.ext
        openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr -subj "/O=system:masters/CN=otelproc-k8s-admin" 2>/dev/null
        openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 7 -extfile admin.ext -out admin.crt 2>/dev/null
        openssl genrsa -out service-account.key 2048 2>/dev/null
        openssl rsa -in service-account.key -pubout -out service-account.pub 2>/dev/null
    )
    cat >"$KUBECONFIG_FILE" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: otelproc-k8s
    cluster: {server: "$API", certificate-authority: "$pki/ca.crt"}
users:
  - name: admin
    user: {client-certificate: "$pki/admin.crt", client-key: "$pki/admin.key"}
contexts:
  - name: otelproc-k8s
    context: {cluster: otelproc-k8s, user: admin}
current-context: otelproc-k8s
EOF
}

network() {
    ip link add "$BRIDGE" type bridge
    ip addr add "$NODE_IP/${POD_CIDR#*/}" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    mkdir -p "$STATE/cni"
    # hairpinMode: a pod reaches itself through its own Service (kube-proxy's DNAT back into the pod).
    cat >"$STATE/cni/10-otelproc-k8s.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "otelproc-k8s",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}],
              "dataDir": "$STATE/cni/ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
    # kube-proxy's rules see traffic between pods on the same bridge only with this on.
    echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
}

containerd_config() {
    # The CRI's own CNI directory: containerd takes the first file in its conf_dir, and /etc/cni/net.d
    # holds podman's. restrict_oom_score_adj: a container may not lower its oom_score_adj below ours
    # (the pause container asks for -998; without CAP_SYS_RESOURCE, as on this VM, that fails).
    cat >"$STATE/containerd.toml" <<EOF
version = 2
root = "$STATE/containerd"
state = "$RUN/containerd"
[grpc]
  address = "$CONTAINERD_SOCKET"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$SANDBOX_IMAGE"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
EOF
}

kubelet_config() {
    # cgroupfs: no systemd here. failCgroupV1: false, since this machine is on cgroup v1 (the kubelet
    # refuses it by default from 1.35 on). The API server reaches the kubelet (logs, exec,
    # port-forward) with the admin certificate, which the kubelet does not check: AlwaysAllow.
    cat >"$STATE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
containerRuntimeEndpoint: unix://$CONTAINERD_SOCKET
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
clusterDomain: cluster.local
clusterDNS: [$NODE_IP]
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
# A test machine's disk is shared with builds: evict on nothing but a nearly full disk.
evictionHard: {nodefs.available: "1%", imagefs.available: "1%", memory.available: "100Mi"}
imageGCHighThresholdPercent: 100
EOF
}

corefile() {
    cat >"$STATE/Corefile" <<EOF
.:53 {
    bind $NODE_IP
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $KUBECONFIG_FILE
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
EOF
}

up() {
    binaries
    [[ ! -e $STATE && ! -e $RUN ]] || fail "$STATE or $RUN exists: a cluster is up, or was not taken down (cluster.sh down)"
    [[ ! -e $KUBELET_ROOT ]] || fail "$KUBELET_ROOT exists: another kubelet's, or a cluster not taken down (cluster.sh down)"
    mkdir -p "$STATE/logs" "$RUN"
    # A failed `up` takes down what it started (its daemons' logs end above).
    trap 'status=$?; ((status == 0)) || { note "up failed: taking down what it started"; down; }' EXIT
    # What `down` puts back.
    iptables-save >"$STATE/iptables.before"
    ip6tables-save >"$STATE/ip6tables.before"
    cat /proc/sys/net/bridge/bridge-nf-call-iptables >"$STATE/bridge-nf-call-iptables.before"
    ls /var/run/netns 2>/dev/null >"$STATE/netns.before" || true
    # What systemd does on a node: the bpffs mounted, and shared (systemd makes every mount shared), which
    # the manifests' mountPropagation: HostToContainer needs (containerd refuses a private one).
    if ! mountpoint -q /sys/fs/bpf; then
        mount -t bpf bpf /sys/fs/bpf
        touch "$STATE/bpffs.mounted"
    fi
    if [[ $(findmnt -n -o PROPAGATION /sys/fs/bpf) == private ]]; then
        mount --make-shared /sys/fs/bpf
        touch "$STATE/bpffs.made-shared"
    fi

    certificates
    network
    containerd_config
    kubelet_config
    corefile

    local pki=$STATE/pki
    start etcd "$ETCD/etcd" --name "$NODE" --data-dir "$STATE/etcd" \
        --listen-client-urls "$ETCD_CLIENT" --advertise-client-urls "$ETCD_CLIENT" \
        --listen-peer-urls "$ETCD_PEER" --initial-advertise-peer-urls "$ETCD_PEER" \
        --initial-cluster "$NODE=$ETCD_PEER"
    start containerd containerd --config "$STATE/containerd.toml"
    start kube-apiserver "$K8S/kube-apiserver" \
        --etcd-servers "$ETCD_CLIENT" --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port 6443 \
        --service-cluster-ip-range "$SERVICE_CIDR" --allow-privileged=true --authorization-mode Node,RBAC \
        --client-ca-file "$pki/ca.crt" --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
        --kubelet-client-certificate "$pki/admin.crt" --kubelet-client-key "$pki/admin.key" \
        --kubelet-preferred-address-types InternalIP \
        --service-account-issuer https://kubernetes.default.svc.cluster.local \
        --service-account-key-file "$pki/service-account.pub" --service-account-signing-key-file "$pki/service-account.key"
    wait_for "API server" 120 kubectl get --raw /readyz
    start kube-controller-manager "$K8S/kube-controller-manager" --kubeconfig "$KUBECONFIG_FILE" \
        --leader-elect=false --secure-port 0 --root-ca-file "$pki/ca.crt" \
        --service-account-private-key-file "$pki/service-account.key" --use-service-account-credentials
    start kube-scheduler "$K8S/kube-scheduler" --kubeconfig "$KUBECONFIG_FILE" --leader-elect=false --secure-port 0
    start kube-proxy "$K8S/kube-proxy" --kubeconfig "$KUBECONFIG_FILE" --hostname-override "$NODE" \
        --proxy-mode iptables --cluster-cidr "$POD_CIDR" --metrics-bind-address 127.0.0.1:10249 --healthz-bind-address 127.0.0.1:10256
    start coredns "$COREDNS/coredns" -conf "$STATE/Corefile"
    wait_for "containerd" 30 ctr version
    start kubelet "$K8S/kubelet" --config "$STATE/kubelet.yaml" --kubeconfig "$KUBECONFIG_FILE" \
        --hostname-override "$NODE" --node-ip "$NODE_IP"
    wait_for "node $NODE Ready" 120 kubectl wait --for=condition=Ready "node/$NODE" --timeout=1s
    wait_for "the default ServiceAccount" 60 kubectl -n default get serviceaccount default
    note "up: Kubernetes $(kubectl version -o json | sed -n 's/.*"gitVersion": "\(v[^"]*\)".*/\1/p' | tail -n1), node $NODE Ready"
    trap - EXIT
    echo "$KUBECONFIG_FILE"
}

load() {
    binaries
    [[ -S $CONTAINERD_SOCKET ]] || fail "the cluster is not up (cluster.sh up)"
    local image qualified
    for image in "$@"; do
        # podman names a local build localhost/NAME; Kubernetes (as Docker) reads NAME as docker.io/library/NAME.
        podman image exists "$image" || fail "no image $image in podman's store"
        qualified=$(podman image inspect --format '{{index .RepoTags 0}}' "$image")
        podman save "$qualified" | ctr images import --no-unpack - >/dev/null
        case $qualified in
            localhost/*/*) ctr images tag --force "$qualified" "docker.io/${qualified#localhost/}" >/dev/null ;;
            localhost/*) ctr images tag --force "$qualified" "docker.io/library/${qualified#localhost/}" >/dev/null ;;
        esac
        note "loaded $image"
    done
}

# stop NAME: SIGTERM, then SIGKILL after 20 s; by the pid `start` wrote.
stop() {
    local name=$1 pid
    [[ -f $RUN/$name.pid ]] || return 0
    pid=$(cat "$RUN/$name.pid")
    if kill -TERM "$pid" 2>/dev/null; then
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$RUN/$name.pid"
}

# unmount_under DIR: every mount at or below DIR, deepest first.
unmount_under() {
    local dir=$1
    awk -v dir="$dir" '$5 == dir || index($5, dir "/") == 1 {print $5}' /proc/self/mountinfo | sort -r |
        while read -r target; do umount -l "$target" 2>/dev/null || true; done
}

# restore_rules TOOL SAVED: the rules (kube-proxy's, the kubelet's, the bridge plugin's) as `up` found them.
# A table that was not there then (with nf_tables, none is until a rule needs it) is emptied, its
# built-in chains' policies set back to ACCEPT; the others restored from the saved rules.
restore_rules() {
    local tool=$1 saved=$2 table chain
    for table in $("$tool-save" | sed -n 's/^\*//p'); do
        grep -qxF "*$table" "$saved" && continue
        "$tool" -t "$table" -F
        "$tool" -t "$table" -X
        for chain in $("$tool-save" -t "$table" | sed -n 's/^:\([A-Z]*\) \(ACCEPT\|DROP\) .*/\1/p'); do
            "$tool" -t "$table" -P "$chain" ACCEPT
        done
    done
    "$tool-restore" <"$saved"
}

down() {
    [[ -e $STATE || -e $RUN || -e $KUBELET_ROOT ]] || { note "no cluster is up"; return 0; }
    binaries
    # The pods first, through the API, while the kubelet runs: their preStop hooks run (the sidecar's
    # `otelproc detach`), and the CRI tears down their network (IP addresses, the bridge plugin's rules).
    if [[ -f $RUN/kube-apiserver.pid ]] && kubectl get --raw /readyz >/dev/null 2>&1; then
        kubectl get namespaces -o name | grep -v -E '^namespace/(default|kube-system|kube-public|kube-node-lease)$' |
            xargs -r "$K8S/kubectl" --kubeconfig "$KUBECONFIG_FILE" delete --wait=false >/dev/null 2>&1 || true
        kubectl delete pods --all --all-namespaces --wait=false >/dev/null 2>&1 || true
        # A pod leaves the API once the kubelet has stopped its containers and its sandbox.
        for ((i = 0; i < 300; i++)); do
            [[ -z $(kubectl get pods --all-namespaces -o name 2>/dev/null) ]] && break
            sleep 0.2
        done
    fi
    local index
    for ((index = ${#DAEMONS[@]} - 1; index >= 0; index--)); do
        if [[ ${DAEMONS[index]} == containerd ]]; then
            # Whatever the kubelet left: killed, then removed with its snapshot.
            local container
            for container in $(ctr containers list -q 2>/dev/null); do
                ctr tasks kill --signal SIGKILL "$container" >/dev/null 2>&1 || true
            done
            sleep 0.5
            for container in $(ctr containers list -q 2>/dev/null); do
                ctr tasks delete --force "$container" >/dev/null 2>&1 || true
                ctr containers delete "$container" >/dev/null 2>&1 || true
            done
        fi
        stop "${DAEMONS[index]}"
    done
    # containerd's shims outlive it; they are ours if their socket is under $RUN or their bundle under $STATE.
    pkill -KILL -f "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCKET" 2>/dev/null || true

    unmount_under "$KUBELET_ROOT"
    unmount_under "$RUN"
    unmount_under "$STATE"
    # The network namespaces of pods the CRI did not tear down (containerd names them cni-<uuid>).
    local netns
    for netns in /var/run/netns/cni-*; do
        [[ -e $netns ]] && ! grep -qxF "${netns##*/}" "$STATE/netns.before" || continue
        umount "$netns" 2>/dev/null || true
        rm -f "$netns"
    done

    ip link delete "$BRIDGE" 2>/dev/null || true
    if [[ -f $STATE/iptables.before ]]; then
        restore_rules iptables "$STATE/iptables.before"
        restore_rules ip6tables "$STATE/ip6tables.before"
        cat "$STATE/bridge-nf-call-iptables.before" >/proc/sys/net/bridge/bridge-nf-call-iptables
    fi
    if [[ -f $STATE/bpffs.mounted ]]; then
        umount /sys/fs/bpf
    elif [[ -f $STATE/bpffs.made-shared ]]; then
        mount --make-private /sys/fs/bpf
    fi
    rm -rf "$STATE" "$RUN" "$KUBELET_ROOT"
    note "down: nothing left"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    load) shift; load "$@" ;;
    kubectl) shift; binaries; kubectl "$@" ;;
    *) note "usage: cluster.sh up | load IMAGE... | down | kubectl ARGS"; exit 2 ;;
esac
