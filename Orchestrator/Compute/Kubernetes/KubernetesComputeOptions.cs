namespace Rbs.Orchestrator.Compute.Kubernetes;

/// <summary>
/// Settings of the Kubernetes compute backend (<c>Orchestrator:Backend=kubernetes</c>): where agent pods go and
/// what they look like. Environment form: <c>Orchestrator__Kubernetes__AgentImage=...</c>.
/// </summary>
internal sealed class KubernetesComputeOptions
{
    public const string SectionName = "Orchestrator:Kubernetes";

    /// <summary>
    /// Namespace the agent pods are created in. Default "" = the namespace of the current kubeconfig context, or
    /// the orchestrator's own namespace when it runs in a pod; "default" when neither says.
    /// </summary>
    public string Namespace { get; set; } = "";

    /// <summary>
    /// Path of a kubeconfig file. Default "" = the in-cluster service account when running in a pod, falling back
    /// to <c>$KUBECONFIG</c> / <c>~/.kube/config</c>.
    /// </summary>
    public string Kubeconfig { get; set; } = "";

    /// <summary>Image of the agent container (must contain <see cref="AgentCommand"/> and bazel). Default "rbs-agent:latest".</summary>
    public string AgentImage { get; set; } = "rbs-agent:latest";

    /// <summary>Pull policy of the agent image: Always, IfNotPresent or Never. Default "IfNotPresent".</summary>
    public string ImagePullPolicy { get; set; } = "IfNotPresent";

    /// <summary>Names of image pull secrets in the namespace for a private registry. Default: none.</summary>
    public List<string> ImagePullSecrets { get; set; } = [];

    /// <summary>The agent executable inside the image. Default "rbs-agent" (resolved on the image's PATH).</summary>
    public string AgentCommand { get; set; } = "rbs-agent";

    /// <summary>
    /// Service account of agent pods. Default "" = the namespace's default account. Agents never talk to the
    /// Kubernetes API, so the token is not mounted either way.
    /// </summary>
    public string ServiceAccountName { get; set; } = "";

    /// <summary>CPU request of the agent container (Kubernetes quantity). Default "1".</summary>
    public string CpuRequest { get; set; } = "1";

    /// <summary>Memory request of the agent container (Kubernetes quantity). Default "2Gi".</summary>
    public string MemoryRequest { get; set; } = "2Gi";

    /// <summary>CPU limit of the agent container. Default "" = no limit (bazel bursts; throttling hurts more than it saves).</summary>
    public string CpuLimit { get; set; } = "";

    /// <summary>Memory limit of the agent container. Default "8Gi".</summary>
    public string MemoryLimit { get; set; } = "8Gi";

    /// <summary>Port the agent listens on inside the pod (gRPC, h2c) and that the probes use. Default 9011.</summary>
    public int AgentPort { get; set; } = 9011;

    /// <summary>
    /// How long StartAsync waits for the pod to be Running and Ready (image pull included) before it gives up and
    /// deletes the pod. Default 00:03:00.
    /// </summary>
    public TimeSpan PodReadyTimeout { get; set; } = TimeSpan.FromMinutes(3);

    /// <summary>
    /// How long a pod may stay Unschedulable before StartAsync gives up. Default 00:00:00 = fail at the first
    /// Unschedulable report. Set it (e.g. 00:02:00) on clusters with a node autoscaler, where Unschedulable is what
    /// triggers the scale-up. Capped by <see cref="PodReadyTimeout"/>.
    /// </summary>
    public TimeSpan UnschedulableGracePeriod { get; set; } = TimeSpan.Zero;

    /// <summary>
    /// Grace period given to a pod when it is deleted (StopAsync, failed start). The agent interrupts running
    /// bazel commands on SIGTERM; this bounds how long that may take. Default 00:00:15.
    /// </summary>
    public TimeSpan DeleteGracePeriod { get; set; } = TimeSpan.FromSeconds(15);

    /// <summary>Prefix of the RBS labels and annotations on agent pods (e.g. "rbs.dev/agent-id"). Default "rbs.dev".</summary>
    public string LabelPrefix { get; set; } = "rbs.dev";

    /// <summary>
    /// Value of the <c>app.kubernetes.io/instance</c> label on agent pods; discovery only adopts pods with this value,
    /// so two installations can share a namespace. Default "rbs" (the helm chart sets the release name).
    /// </summary>
    public string Instance { get; set; } = "rbs";

    /// <summary>Node selector of agent pods (label → value). Default: none.</summary>
    public Dictionary<string, string> NodeSelector { get; set; } = [];

    /// <summary>Tolerations of agent pods, e.g. for a dedicated build node pool. Default: none.</summary>
    public List<KubernetesToleration> Tolerations { get; set; } = [];

    /// <summary>Path of the agent's workspace inside the pod (passed as <c>--workspace</c>). Default "/workspace".</summary>
    public string WorkspacePath { get; set; } = "/workspace";

    /// <summary>
    /// Size limit of the workspace emptyDir when <see cref="WorkspaceClaimName"/> is empty. Default "" = no limit.
    /// </summary>
    public string WorkspaceSizeLimit { get; set; } = "";

    /// <summary>
    /// An existing (ReadWriteMany) PersistentVolumeClaim to keep workspaces on instead of an emptyDir. Each agent
    /// mounts the sub-path "&lt;user&gt;/&lt;repo-hash&gt;", so a replacement agent finds its predecessor's tree.
    /// Default "" = emptyDir (the workspace lives as long as the pod).
    /// </summary>
    public string WorkspaceClaimName { get; set; } = "";

    /// <summary>
    /// Mount nothing at <see cref="WorkspacePath"/>: the image's own directory is the workspace (an image with a
    /// source snapshot baked in; the Kind e2e uses this until workspace sync lands). Default false.
    /// </summary>
    public bool WorkspaceFromImage { get; set; }

    /// <summary>
    /// Mount path of an emptyDir for bazel's output base (bazel uses <c>$HOME/.cache/bazel</c>), so the cache lives
    /// on pod-local scratch space and survives agent container restarts within the pod. Default "/home/rbs/.cache"
    /// (HOME of the agent image's user).
    /// </summary>
    public string CachePath { get; set; } = "/home/rbs/.cache";

    /// <summary>User id the agent container runs as (non-root; matches the image's user). Default 10001.</summary>
    public long RunAsUser { get; set; } = 10001;

    /// <summary>
    /// Environment variable that carries the gateway join token to a tunnel-mode agent (kept out of the pod's
    /// command line). Default "Agent__Tunnel__JoinToken", i.e. the agent's <c>Agent:Tunnel:JoinToken</c> setting.
    /// </summary>
    public string JoinTokenEnvironmentVariable { get; set; } = "Agent__Tunnel__JoinToken";
}

/// <summary>One pod toleration (<c>Orchestrator__Kubernetes__Tolerations__0__Key=...</c>).</summary>
internal sealed class KubernetesToleration
{
    /// <summary>Taint key. Default "" (with Operator Exists: every taint).</summary>
    public string Key { get; set; } = "";

    /// <summary>Equal or Exists. Default "Equal".</summary>
    public string Operator { get; set; } = "Equal";

    /// <summary>Taint value for Operator Equal. Default "".</summary>
    public string Value { get; set; } = "";

    /// <summary>NoSchedule, PreferNoSchedule or NoExecute; "" = all effects. Default "".</summary>
    public string Effect { get; set; } = "";
}
