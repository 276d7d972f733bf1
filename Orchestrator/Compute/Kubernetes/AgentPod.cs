using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using k8s.Models;

namespace Rbs.Orchestrator.Compute.Kubernetes;

/// <summary>
/// The agent pod's shape: name, labels, annotations, container. Labels identify the pod for discovery (values
/// must be valid label values, so users and repo hashes are sanitized); annotations keep the full values.
/// </summary>
internal static partial class AgentPod
{
    public const string NameLabel = "app.kubernetes.io/name";
    public const string NameValue = "rbs-agent";
    public const string ManagedByLabel = "app.kubernetes.io/managed-by";
    public const string ManagedByValue = "rbs-orchestrator";
    public const string InstanceLabel = "app.kubernetes.io/instance";
    public const string ContainerName = "agent";

    private const int MaxLabelValueLength = 63;

    public static string AgentIdKey(KubernetesComputeOptions options) => options.LabelPrefix + "/agent-id";

    public static string UserKey(KubernetesComputeOptions options) => options.LabelPrefix + "/user";

    public static string RepoHashKey(KubernetesComputeOptions options) => options.LabelPrefix + "/repo-hash";

    public static string SourcePathKey(KubernetesComputeOptions options) => options.LabelPrefix + "/source-path";

    /// <summary>Label selector matching every agent pod of this installation.</summary>
    public static string Selector(KubernetesComputeOptions options) =>
        $"{ManagedByLabel}={ManagedByValue},{NameLabel}={NameValue},{InstanceLabel}={LabelValue(options.Instance)}";

    /// <summary>Pod name for an agent id: a DNS-1123 label, so the id is lower-cased and trimmed to fit.</summary>
    public static string PodName(string agentId)
    {
        var cleaned = NotDnsLabelChars().Replace(agentId.ToLowerInvariant(), "-").Trim('-');
        var name = "rbs-agent-" + cleaned;
        return name.Length <= MaxLabelValueLength ? name : name[..(MaxLabelValueLength - 9)] + "-" + ShortHash(agentId, 8);
    }

    /// <summary>
    /// A valid label value for any string: kept as is when already valid, otherwise the allowed characters (at
    /// most 46) plus "-" and 16 hex chars of its SHA-256, so distinct inputs keep distinct labels.
    /// </summary>
    public static string LabelValue(string value)
    {
        if (value.Length <= MaxLabelValueLength && ValidLabelValue().IsMatch(value))
        {
            return value;
        }

        var kept = NotLabelChars().Replace(value, "-");
        kept = kept.Length > 46 ? kept[..46] : kept;
        kept = kept.Trim('-', '_', '.');
        var hash = ShortHash(value, 16);
        return kept.Length == 0 ? "h-" + hash : kept + "-" + hash;
    }

    public static V1Pod Build(AgentSpec spec, KubernetesComputeOptions options)
    {
        var podName = PodName(spec.AgentId);
        var args = new List<string>
        {
            "--agent-id", spec.AgentId,
            "--workspace", options.WorkspacePath,
            // Sync staging and the tree index live on the cache volume: the workspace's parent is the image's root,
            // which need not be writable. Placing files across volumes falls back to copy + rename in the agent.
            "--sync-state-dir", options.CachePath.TrimEnd('/') + "/rbs-sync",
            "--listen", "0.0.0.0:" + options.AgentPort.ToString(CultureInfo.InvariantCulture),
        };
        var env = new List<V1EnvVar>
        {
            // .NET reads HOME for ~; bazel keeps its output base under $HOME/.cache (an emptyDir, see CachePath).
            new V1EnvVar { Name = "HOME", Value = "/home/rbs" },
            // Whose agent this is, for the agent's audit line of each command (docs/operations.md).
            new V1EnvVar { Name = "Agent__UserId", Value = spec.UserId },
        };
        if (spec.Tunnel is { } tunnel)
        {
            // The agent still listens on AgentPort: kubelet's gRPC probes need it. NetworkPolicy (helm chart) keeps
            // everything else out in tunnel mode.
            args.Add("--gateway");
            args.Add(tunnel.GatewayAddress);
            env.Add(new V1EnvVar { Name = options.JoinTokenEnvironmentVariable, Value = tunnel.JoinToken });
        }

        var resources = new V1ResourceRequirements
        {
            Requests = Quantities(("cpu", options.CpuRequest), ("memory", options.MemoryRequest)),
            Limits = Quantities(("cpu", options.CpuLimit), ("memory", options.MemoryLimit)),
        };

        var workspaceVolume = options.WorkspaceClaimName.Length > 0
            ? new V1Volume
            {
                Name = "workspace",
                PersistentVolumeClaim = new V1PersistentVolumeClaimVolumeSource { ClaimName = options.WorkspaceClaimName },
            }
            : new V1Volume
            {
                Name = "workspace",
                EmptyDir = new V1EmptyDirVolumeSource
                {
                    SizeLimit = options.WorkspaceSizeLimit.Length > 0 ? new ResourceQuantity(options.WorkspaceSizeLimit) : null,
                },
            };

        var container = new V1Container
        {
            Name = ContainerName,
            Image = options.AgentImage,
            ImagePullPolicy = options.ImagePullPolicy,
            Command = [options.AgentCommand],
            Args = args,
            Env = env,
            Ports = [new V1ContainerPort { ContainerPort = options.AgentPort, Name = "grpc", Protocol = "TCP" }],
            Resources = resources,
            // gRPC health (grpc.health.v1) served by the agent on its listener; kubelet probes it natively (1.27+).
            // Readiness: service "" (every check: not stopping, the workspace readable); liveness: "liveness" (the
            // process answers). docs/operations.md.
            ReadinessProbe = new V1Probe
            {
                Grpc = new V1GRPCAction { Port = options.AgentPort },
                PeriodSeconds = 2,
                TimeoutSeconds = 2,
                FailureThreshold = 3,
            },
            LivenessProbe = new V1Probe
            {
                Grpc = new V1GRPCAction { Port = options.AgentPort, Service = "liveness" },
                InitialDelaySeconds = 10,
                PeriodSeconds = 10,
                TimeoutSeconds = 5,
                FailureThreshold = 6,
            },
            VolumeMounts = options.WorkspaceFromImage
                ? [new V1VolumeMount { Name = "cache", MountPath = options.CachePath }]
                :
                [
                    new V1VolumeMount
                    {
                        Name = "workspace",
                        MountPath = options.WorkspacePath,
                        SubPath = options.WorkspaceClaimName.Length > 0 ? LabelValue(spec.UserId) + "/" + LabelValue(spec.RepoHash) : null,
                    },
                    new V1VolumeMount { Name = "cache", MountPath = options.CachePath },
                ],
            SecurityContext = new V1SecurityContext
            {
                AllowPrivilegeEscalation = false,
                Capabilities = new V1Capabilities { Drop = ["ALL"] },
                RunAsNonRoot = true,
                RunAsUser = options.RunAsUser,
                RunAsGroup = options.RunAsUser,
            },
        };

        return new V1Pod
        {
            ApiVersion = "v1",
            Kind = "Pod",
            Metadata = new V1ObjectMeta
            {
                Name = podName,
                Labels = new Dictionary<string, string>
                {
                    [NameLabel] = NameValue,
                    [ManagedByLabel] = ManagedByValue,
                    [InstanceLabel] = LabelValue(options.Instance),
                    [AgentIdKey(options)] = LabelValue(spec.AgentId),
                    [UserKey(options)] = LabelValue(spec.UserId),
                    [RepoHashKey(options)] = LabelValue(spec.RepoHash),
                },
                Annotations = new Dictionary<string, string>
                {
                    [AgentIdKey(options)] = spec.AgentId,
                    [UserKey(options)] = spec.UserId,
                    [RepoHashKey(options)] = spec.RepoHash,
                    [SourcePathKey(options)] = spec.SourcePath,
                },
            },
            Spec = new V1PodSpec
            {
                // A crashed agent restarts in place (same pod IP); StartAsync fails fast on the first crash instead.
                RestartPolicy = "Always",
                ServiceAccountName = options.ServiceAccountName.Length > 0 ? options.ServiceAccountName : null,
                AutomountServiceAccountToken = false,
                EnableServiceLinks = false,
                TerminationGracePeriodSeconds = (long)Math.Ceiling(options.DeleteGracePeriod.TotalSeconds),
                ImagePullSecrets = options.ImagePullSecrets.Count > 0
                    ? options.ImagePullSecrets.Select(s => new V1LocalObjectReference { Name = s }).ToList()
                    : null,
                NodeSelector = options.NodeSelector.Count > 0 ? new Dictionary<string, string>(options.NodeSelector) : null,
                Tolerations = options.Tolerations.Count > 0
                    ? options.Tolerations.Select(t => new V1Toleration
                    {
                        Effect = NullIfEmpty(t.Effect),
                        Key = NullIfEmpty(t.Key),
                        OperatorProperty = NullIfEmpty(t.Operator),
                        Value = NullIfEmpty(t.Value),
                    }).ToList()
                    : null,
                SecurityContext = new V1PodSecurityContext
                {
                    RunAsNonRoot = true,
                    RunAsUser = options.RunAsUser,
                    RunAsGroup = options.RunAsUser,
                    FsGroup = options.RunAsUser,
                    SeccompProfile = new V1SeccompProfile { Type = "RuntimeDefault" },
                },
                Containers = [container],
                Volumes = options.WorkspaceFromImage
                    ? [new V1Volume { Name = "cache", EmptyDir = new V1EmptyDirVolumeSource() }]
                    : [workspaceVolume, new V1Volume { Name = "cache", EmptyDir = new V1EmptyDirVolumeSource() }],
            },
        };
    }

    /// <summary>Reads back what <see cref="Build"/> wrote; null when the pod is not one of ours or lacks its id.</summary>
    public static (string AgentId, string UserId, string RepoHash, string SourcePath)? Identity(
        V1Pod pod, KubernetesComputeOptions options)
    {
        var annotations = pod.Metadata?.Annotations;
        var labels = pod.Metadata?.Labels;
        string? Read(string key) =>
            annotations is not null && annotations.TryGetValue(key, out var a) ? a
            : labels is not null && labels.TryGetValue(key, out var l) ? l
            : null;

        var agentId = Read(AgentIdKey(options));
        if (string.IsNullOrEmpty(agentId))
        {
            return null;
        }

        return (agentId, Read(UserKey(options)) ?? "", Read(RepoHashKey(options)) ?? "", Read(SourcePathKey(options)) ?? "");
    }

    public static string Address(string podIp, int port) =>
        // IPv6 pod IPs need brackets in a URI.
        podIp.Contains(':', StringComparison.Ordinal)
            ? $"http://[{podIp}]:{port.ToString(CultureInfo.InvariantCulture)}"
            : $"http://{podIp}:{port.ToString(CultureInfo.InvariantCulture)}";

    private static Dictionary<string, ResourceQuantity>? Quantities(params (string Name, string Value)[] items)
    {
        var set = items.Where(i => i.Value.Length > 0).ToDictionary(i => i.Name, i => new ResourceQuantity(i.Value));
        return set.Count > 0 ? set : null;
    }

    private static string? NullIfEmpty(string value) => value.Length > 0 ? value : null;

    private static string ShortHash(string value, int hexChars) =>
        Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(value)))[..hexChars];

    [GeneratedRegex("^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")]
    private static partial Regex ValidLabelValue();

    [GeneratedRegex("[^A-Za-z0-9_.-]")]
    private static partial Regex NotLabelChars();

    [GeneratedRegex("[^a-z0-9-]")]
    private static partial Regex NotDnsLabelChars();
}
