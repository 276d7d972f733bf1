using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Rbs.Orchestrator.Compute;
using Rbs.Orchestrator.Compute.Kubernetes;

namespace Rbs.Tests.Orchestrator.Kubernetes;

/// <summary><c>AddKubernetesCompute</c>: configuration keys, kubeconfig resolution and validation.</summary>
public sealed class KubernetesComputeRegistrationTests(ITestOutputHelper output) : IAsyncLifetime
{
    private FakeKubernetesApiServer _server = null!;
    private string _dir = null!;

    public async Task InitializeAsync()
    {
        _server = await FakeKubernetesApiServer.StartAsync(output.WriteLine);
        _dir = Directory.CreateTempSubdirectory("rbs-k8s-").FullName;
    }

    public async Task DisposeAsync()
    {
        await _server.DisposeAsync();
        Directory.Delete(_dir, recursive: true);
    }

    [Fact]
    public async Task KubeconfigFromConfigurationSelectsTheClusterAndItsContextNamespace()
    {
        var kubeconfig = WriteKubeconfig("from-kubeconfig");
        using var provider = Build(new()
        {
            ["Orchestrator:Kubernetes:Kubeconfig"] = kubeconfig,
            ["Orchestrator:Kubernetes:AgentImage"] = "example/agent:7",
            ["Orchestrator:Kubernetes:Tolerations:0:Key"] = "dedicated",
            ["Orchestrator:Kubernetes:Tolerations:0:Value"] = "builds",
            ["Orchestrator:Kubernetes:NodeSelector:pool"] = "builders",
        });

        var compute = provider.GetRequiredService<IComputeService>();
        Assert.Equal("kubernetes", compute.Backend);
        var options = provider.GetRequiredService<IOptions<KubernetesComputeOptions>>().Value;
        Assert.Equal("example/agent:7", options.AgentImage);
        Assert.Equal("builds", Assert.Single(options.Tolerations).Value);
        Assert.Equal("builders", options.NodeSelector["pool"]);

        Assert.Empty(await compute.DiscoverAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.Contains(_server.Requests, r => r.StartsWith("GET /api/v1/namespaces/from-kubeconfig/pods?", StringComparison.Ordinal));
    }

    [Fact]
    public async Task ConfiguredNamespaceWinsOverTheKubeconfigContext()
    {
        using var provider = Build(new()
        {
            ["Orchestrator:Kubernetes:Kubeconfig"] = WriteKubeconfig("from-kubeconfig"),
            ["Orchestrator:Kubernetes:Namespace"] = "rbs-agents",
        });

        await provider.GetRequiredService<IComputeService>().DiscoverAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Contains(_server.Requests, r => r.StartsWith("GET /api/v1/namespaces/rbs-agents/pods?", StringComparison.Ordinal));
    }

    [Fact]
    public void InvalidSettingsAreRejectedNamingTheKey()
    {
        using var provider = Build(new()
        {
            ["Orchestrator:Kubernetes:MemoryRequest"] = "lots",
            ["Orchestrator:Kubernetes:Namespace"] = "Not_A_Namespace",
            ["Orchestrator:Kubernetes:ImagePullPolicy"] = "Sometimes",
        });

        var error = Assert.Throws<OptionsValidationException>(() => provider.GetRequiredService<IOptions<KubernetesComputeOptions>>().Value);
        output.WriteLine(error.Message);
        Assert.Contains("Orchestrator:Kubernetes:MemoryRequest 'lots'", error.Message, StringComparison.Ordinal);
        Assert.Contains("Orchestrator:Kubernetes:Namespace 'Not_A_Namespace'", error.Message, StringComparison.Ordinal);
        Assert.Contains("Orchestrator:Kubernetes:ImagePullPolicy", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void MissingKubeconfigFailsWithAnActionableMessage()
    {
        using var provider = Build(new() { ["Orchestrator:Kubernetes:Kubeconfig"] = Path.Combine(_dir, "nope.yaml") });

        var error = Assert.ThrowsAny<Exception>(() => provider.GetRequiredService<IComputeService>());
        output.WriteLine(error.ToString());
        Assert.Contains("Set Orchestrator:Kubernetes:Kubeconfig or KUBECONFIG", error.Message, StringComparison.Ordinal);
    }

    private ServiceProvider Build(Dictionary<string, string?> settings)
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(settings).Build();
        var services = new ServiceCollection();
        services.AddSingleton<IConfiguration>(configuration);
        services.AddLogging(b => b.SetMinimumLevel(LogLevel.Debug));
        services.AddKubernetesCompute(configuration);
        return services.BuildServiceProvider();
    }

    private string WriteKubeconfig(string ns)
    {
        var path = Path.Combine(_dir, "kubeconfig.yaml");
        File.WriteAllText(path, $"""
            apiVersion: v1
            kind: Config
            clusters:
            - name: fake
              cluster:
                server: {_server.Address}
            contexts:
            - name: fake
              context:
                cluster: fake
                user: fake
                namespace: {ns}
            current-context: fake
            users:
            - name: fake
              user:
                token: not-checked
            """);
        return path;
    }
}
