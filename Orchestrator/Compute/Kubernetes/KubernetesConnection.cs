using k8s;

namespace Rbs.Orchestrator.Compute.Kubernetes;

/// <summary>The API client and the namespace agent pods live in, resolved once from the options.</summary>
internal sealed record KubernetesConnection(IKubernetes Client, string Namespace)
{
    /// <summary>
    /// Kubeconfig path when set; otherwise the in-cluster service account, falling back to
    /// <c>$KUBECONFIG</c>/<c>~/.kube/config</c> (the developer's laptop or a CI runner with Kind).
    /// </summary>
    public static KubernetesConnection Create(KubernetesComputeOptions options)
    {
        KubernetesClientConfiguration config;
        try
        {
            config = options.Kubeconfig.Length > 0
                ? KubernetesClientConfiguration.BuildConfigFromConfigFile(options.Kubeconfig)
                : KubernetesClientConfiguration.IsInCluster()
                    ? KubernetesClientConfiguration.InClusterConfig()
                    : !string.IsNullOrEmpty(Environment.GetEnvironmentVariable("KUBECONFIG"))
                        // BuildDefaultConfig merges the KUBECONFIG list the way kubectl does.
                        ? KubernetesClientConfiguration.BuildDefaultConfig()
                        // Not BuildDefaultConfig here: it would silently fall back to http://localhost:8080.
                        : KubernetesClientConfiguration.BuildConfigFromConfigFile();
        }
        catch (Exception e) when (e is k8s.Exceptions.KubeConfigException or IOException or UnauthorizedAccessException)
        {
            throw new InvalidOperationException(
                "Orchestrator:Backend=kubernetes but no Kubernetes API is configured: not running in a pod, and " +
                $"no usable kubeconfig ({e.Message}). Set Orchestrator:Kubernetes:Kubeconfig or KUBECONFIG.", e);
        }

        var ns = options.Namespace.Length > 0 ? options.Namespace
            : !string.IsNullOrEmpty(config.Namespace) ? config.Namespace
            : "default";
        return new KubernetesConnection(new k8s.Kubernetes(config), ns);
    }
}
