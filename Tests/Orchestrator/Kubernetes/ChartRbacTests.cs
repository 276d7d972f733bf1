using System.Text.RegularExpressions;
using Microsoft.Extensions.Options;
using Rbs.Orchestrator.Compute;
using Rbs.Orchestrator.Compute.Kubernetes;
using Rbs.Orchestrator.State;
using Rbs.Tests.Infrastructure;
using k8s;

namespace Rbs.Tests.Orchestrator.Kubernetes;

/// <summary>
/// The helm chart's Role grants exactly the pod verbs KubernetesComputeService uses: derived from the requests the
/// real client sends to the fake API server over a whole agent lifecycle, not from a list kept by hand.
/// </summary>
public sealed partial class ChartRbacTests(ITestOutputHelper output)
{
    [Fact]
    public async Task RoleGrantsExactlyThePodVerbsTheServiceUses()
    {
        await using var server = await FakeKubernetesApiServer.StartAsync(output.WriteLine);
        var service = new KubernetesComputeService(
            new KubernetesConnection(new k8s.Kubernetes(new KubernetesClientConfiguration { Host = server.Address }), "ns"),
            Options.Create(new KubernetesComputeOptions { Namespace = "ns" }), TimeProvider.System,
            new TestOutputLogger<KubernetesComputeService>(output));

        var start = service.StartAsync(new AgentSpec("r1", "u", "r", "/s"), CancellationToken.None);
        await server.WaitForWatchAsync("ns", "rbs-agent-r1").WaitAsync(TimeSpan.FromSeconds(10));
        server.UpdatePod("ns", "rbs-agent-r1", p => FakePodStates.RunningReady(p, "10.9.9.9"));
        var started = await start.WaitAsync(TimeSpan.FromSeconds(10));
        var record = new AgentRecord("r1", "u", "r", "/s", "kubernetes", started.BackendRef, started.Address,
            AgentState.Ready, DateTimeOffset.UtcNow, DateTimeOffset.UtcNow, null, null);
        await service.ProbeAsync(record, CancellationToken.None);
        await service.DiscoverAsync(CancellationToken.None);
        await service.StopAsync(record, CancellationToken.None);

        var used = server.Requests.Select(Verb).ToHashSet();
        var granted = ChartPodVerbs();
        output.WriteLine($"used: {string.Join(", ", used.Order())}; granted: {string.Join(", ", granted.Order())}");

        Assert.Equal(used.Order(), granted.Order());
    }

    private static string Verb(string request)
    {
        var parts = request.Split(' ', 2);
        var path = parts[1].Split('?')[0];
        var isCollection = path.EndsWith("/pods", StringComparison.Ordinal);
        return parts[0] switch
        {
            "POST" => "create",
            "DELETE" => "delete",
            "GET" when parts[1].Contains("watch=true", StringComparison.Ordinal) => "watch",
            "GET" when isCollection => "list",
            "GET" => "get",
            _ => throw new InvalidOperationException("unexpected request " + request),
        };
    }

    private static HashSet<string> ChartPodVerbs()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "helm", "rbs", "templates", "orchestrator-rbac.yaml")))
        {
            dir = dir.Parent;
        }

        Assert.NotNull(dir);
        var rbac = File.ReadAllText(Path.Combine(dir.FullName, "helm", "rbs", "templates", "orchestrator-rbac.yaml"));
        var rule = PodRule().Match(rbac);
        Assert.True(rule.Success, "no rule for pods in orchestrator-rbac.yaml");
        return rule.Groups[1].Value.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).ToHashSet();
    }

    [GeneratedRegex(@"resources:\s*\[pods\]\s*\n\s*verbs:\s*\[([^\]]*)\]")]
    private static partial Regex PodRule();
}
