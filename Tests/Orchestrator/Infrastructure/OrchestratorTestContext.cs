using Grpc.Net.Client;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Rbs.Orchestrator.Compute.Processes;
using Rbs.Orchestrator.Hosting;
using Rbs.Orchestrator.State;
using Rbs.Tests.Infrastructure;
using Rbs.V1;

namespace Rbs.Tests.Orchestrator.Infrastructure;

/// <summary>
/// One test's world: a temp directory holding the state file, the agents directory and workspaces, plus
/// the in-process orchestrators started on it. Disposal stops the hosts, kills every agent process ever
/// spawned for this state directory (pass or fail), and deletes the directory.
/// </summary>
internal sealed class OrchestratorTestContext(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly List<TestOrchestrator> _hosts = [];

    public ITestOutputHelper Output { get; } = output;

    public string Root { get; } = Directory.CreateTempSubdirectory("rbs-orch-test-").FullName;

    /// <summary>The log of every orchestrator this context starts, with a count per RBS event id.</summary>
    public TestOutputLoggerProvider Logs { get; } = new(output);

    public string StatePath => Path.Combine(Root, "state", "orchestrator.db");

    public string AgentsDirectory => Path.Combine(Root, "state", "agents");

    /// <summary>A new workspace directory (what jbazel would send as source_path).</summary>
    public string CreateWorkspace(string name)
    {
        var path = Path.Combine(Root, "workspaces", name);
        Directory.CreateDirectory(path);
        return path;
    }

    /// <summary>Starts an orchestrator on this context's state file with the given agent executable.</summary>
    public async Task<TestOrchestrator> StartOrchestratorAsync(
        string agentPath, Action<WebApplicationBuilder>? configure = null, params string[] extraArgs)
    {
        string[] args =
        [
            "--local-mode",
            "--port", "0",
            "--state-path", StatePath,
            "--agent-path", agentPath,
            .. extraArgs,
        ];
        var app = OrchestratorHost.Build(
            args,
            builder =>
            {
                builder.Logging.ClearProviders();
                builder.Logging.AddProvider(Logs);
                builder.Logging.SetMinimumLevel(LogLevel.Debug);
                builder.Logging.AddFilter("Microsoft", LogLevel.Warning);
                builder.Logging.AddFilter("Grpc", LogLevel.Warning);
                configure?.Invoke(builder);
            },
            contentRoot: Root);
        var host = new TestOrchestrator(app);
        _hosts.Add(host);
        await app.StartAsync().WaitAsync(TimeSpan.FromSeconds(30));
        host.Connect();
        Output.WriteLine($"orchestrator listening on {host.Address}");
        return host;
    }

    public Task InitializeAsync() => Task.CompletedTask;

    // xunit's lifecycle (IAsyncLifetime) runs this after every test, pass or fail.
    public async Task DisposeAsync()
    {
        foreach (var host in _hosts)
        {
            await host.DisposeAsync();
        }

        TestAgents.KillAll(AgentsDirectory);
        try
        {
            Directory.Delete(Root, recursive: true);
        }
        catch (IOException)
        {
            // A late write from a dying process; the temp dir is harmless.
        }
    }
}

/// <summary>An in-process orchestrator on 127.0.0.1:0 with a real gRPC client.</summary>
internal sealed class TestOrchestrator(WebApplication app) : IAsyncDisposable
{
    private GrpcChannel? _channel;
    private bool _stopped;

    public WebApplication App { get; } = app;

    public string Address { get; private set; } = string.Empty;

    public V1.Orchestrator.OrchestratorClient Client { get; private set; } = null!;

    public IStateStore Store => App.Services.GetRequiredService<IStateStore>();

    public ProcessComputeService Compute =>
        (ProcessComputeService)App.Services.GetRequiredKeyedService<Rbs.Orchestrator.Compute.IComputeService>(ProcessComputeService.BackendName);

    public T Service<T>()
        where T : notnull => App.Services.GetRequiredService<T>();

    public void Connect()
    {
        Address = App.Services.GetRequiredService<ListeningAnnouncer>().Address
            ?? throw new InvalidOperationException("the orchestrator did not report its address");
        _channel = GrpcChannel.ForAddress(Address);
        Client = new V1.Orchestrator.OrchestratorClient(_channel);
    }

    public Task<GetServerResponse> GetServerAsync(string repoHash, string sourcePath) =>
        Client.GetServerAsync(new GetServerRequest { RepoHash = repoHash, SourcePath = sourcePath }).ResponseAsync
            .WaitAsync(TimeSpan.FromSeconds(30));

    /// <summary>Stops the host (like an orchestrator exit); agents keep running.</summary>
    public async Task StopAsync()
    {
        if (_stopped)
        {
            return;
        }

        _stopped = true;
        _channel?.Dispose();
        await App.StopAsync().WaitAsync(TimeSpan.FromSeconds(30));
        await App.DisposeAsync();
    }

    public async ValueTask DisposeAsync() => await StopAsync();
}
