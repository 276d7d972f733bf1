using System.Text;
using Microsoft.Extensions.Options;
using Rbs.Orchestrator.Compute;
using Rbs.Orchestrator.Compute.Kubernetes;
using Rbs.Orchestrator.State;
using Rbs.Tests.Infrastructure;
using Testcontainers.K3s;
using k8s;
using k8s.Models;

namespace Rbs.Tests.Orchestrator.Kubernetes;

/// <summary>
/// The same create → watch-until-ready → discover → delete flow against a real K3s cluster (Testcontainers), where
/// a Docker engine is available; skipped otherwise. The rbs-agent image does not exist in that cluster, so the pod
/// runs busybox with an exec readiness probe instead of the agent's gRPC health probe: this covers the API
/// objects, RBAC-free pod lifecycle, watch semantics, labels and the image-pull failure path on a real API server
/// and kubelet, not the agent process itself (e2e/kind_test.sh covers that).
/// </summary>
public sealed class K3sClusterTests(ITestOutputHelper output)
{
    private const string K3sImage = "rancher/k3s:v1.31.2-k3s1";
    private const string StandInImage = "busybox:1.36";

    [SkippableFact]
    public async Task AgentPodLifecycleOnARealK3sCluster()
    {
        Skip.If(DockerEngine.UnavailableReason is not null, $"K3s test needs a Docker engine: {DockerEngine.UnavailableReason}");

        await using var k3s = new K3sBuilder(K3sImage).Build();
        await k3s.StartAsync().WaitAsync(TimeSpan.FromMinutes(3));
        var kubeconfig = await k3s.GetKubeconfigAsync();
        var config = KubernetesClientConfiguration.BuildConfigFromConfigFile(new MemoryStream(Encoding.UTF8.GetBytes(kubeconfig)));
        using var client = new k8s.Kubernetes(config);

        var service = NewService(client, StandInImage);
        var started = await service.StartAsync(new AgentSpec("ak3s1", "alice@example.com", "repo-1", "/src/a"), CancellationToken.None)
            .WaitAsync(TimeSpan.FromMinutes(4));
        output.WriteLine($"started {started}");
        Assert.Equal("rbs-agent-ak3s1", started.BackendRef);
        Assert.Matches(@"^http://\d+\.\d+\.\d+\.\d+:9011$", started.Address);

        var record = new AgentRecord("ak3s1", "alice@example.com", "repo-1", "/src/a", "kubernetes", started.BackendRef,
            started.Address, AgentState.Ready, DateTimeOffset.UtcNow, DateTimeOffset.UtcNow, null, null);
        Assert.Equal(AgentHealth.Alive, await service.ProbeAsync(record, CancellationToken.None));

        var restarted = NewService(client, StandInImage);
        var found = Assert.Single(await restarted.DiscoverAsync(CancellationToken.None));
        Assert.Equal(new DiscoveredAgent("ak3s1", "alice@example.com", "repo-1", "/src/a", started.BackendRef, started.Address), found);

        await restarted.StopAsync(record, CancellationToken.None);
        Assert.Equal(AgentHealth.Dead, await restarted.ProbeAsync(record, CancellationToken.None));
        await restarted.StopAsync(record, CancellationToken.None); // idempotent

        // An image that cannot be pulled: a permanent, named failure, and the pod is gone.
        var broken = NewService(client, "rbs.invalid/no-such-agent:0");
        var failure = await Assert.ThrowsAsync<ComputeException>(
            () => broken.StartAsync(new AgentSpec("ak3s2", "bob", "repo-2", "/src/b"), CancellationToken.None).WaitAsync(TimeSpan.FromMinutes(3)));
        output.WriteLine(failure.Message);
        Assert.False(failure.Transient);
        Assert.Contains("rbs.invalid/no-such-agent:0", failure.Message, StringComparison.Ordinal);
        var leftovers = await client.CoreV1.ListNamespacedPodAsync("default", fieldSelector: "metadata.name=rbs-agent-ak3s2");
        Assert.All(leftovers.Items, p => Assert.NotNull(p.Metadata.DeletionTimestamp));
    }

    private KubernetesComputeService NewService(IKubernetes client, string image) => new(
        new KubernetesConnection(client, "default"),
        Options.Create(new KubernetesComputeOptions
        {
            Namespace = "default",
            AgentImage = image,
            CpuRequest = "50m",
            MemoryRequest = "32Mi",
            MemoryLimit = "64Mi",
            PodReadyTimeout = TimeSpan.FromMinutes(3),
            DeleteGracePeriod = TimeSpan.FromSeconds(1),
        }),
        TimeProvider.System,
        new TestOutputLogger<KubernetesComputeService>(output))
    {
        // busybox has neither rbs-agent nor a gRPC health endpoint: sleep, and count as ready once running.
        PodOverride = pod =>
        {
            var container = pod.Spec.Containers[0];
            container.Command = ["sh", "-c", "sleep 3600"];
            container.Args = null;
            container.ReadinessProbe = new V1Probe { Exec = new V1ExecAction { Command = ["true"] }, PeriodSeconds = 1 };
            container.LivenessProbe = null;
        },
    };
}
