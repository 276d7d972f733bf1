using System.Net.Http;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Rbs.Agent.Execution;
using Rbs.Agent.Hosting;
using Rbs.Agent.Lifetime;
using Rbs.Agent.Sync;
using Rbs.Tests.Infrastructure;
using Rbs.V1;

namespace Rbs.Tests.Agent.Sync;

/// <summary>
/// Directories for one sync test: <c>ws</c> (the agent's workspace), <c>state</c> (its sync state), <c>outside</c>
/// (must never be written) and <c>src</c> (the client's tree). Deleted on dispose.
/// </summary>
internal sealed class SyncDirs : IDisposable
{
    public SyncDirs()
    {
        Root = Native.RealPath(Directory.CreateTempSubdirectory("rbs-sync-").FullName)!;
        Directory.CreateDirectory(Workspace);
        Directory.CreateDirectory(Outside);
        Directory.CreateDirectory(Source);
    }

    public string Root { get; }

    public string Workspace => Path.Combine(Root, "ws");

    public string State => Path.Combine(Root, "state");

    public string Outside => Path.Combine(Root, "outside");

    public string Source => Path.Combine(Root, "src");

    public void Dispose()
    {
        try
        {
            Directory.Delete(Root, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}

/// <summary>A real agent (AgentHost, Kestrel on 127.0.0.1:0) whose workspace and sync state live in <see cref="SyncDirs"/>.</summary>
internal sealed class SyncTestAgent : IAsyncDisposable
{
    private SyncTestAgent(WebApplication app, string address, TestOutputLoggerProvider logs)
    {
        App = app;
        Logs = logs;
        Channel = GrpcChannel.ForAddress(address, new GrpcChannelOptions
        {
            HttpHandler = new SocketsHttpHandler { EnableMultipleHttp2Connections = true },
        });
        Client = new WorkspaceSync.WorkspaceSyncClient(Channel);
    }

    public WebApplication App { get; }

    public TestOutputLoggerProvider Logs { get; }

    public GrpcChannel Channel { get; }

    public WorkspaceSync.WorkspaceSyncClient Client { get; }

    public WorkspaceSynchronizer Synchronizer => App.Services.GetRequiredService<WorkspaceSynchronizer>();

    public static async Task<SyncTestAgent> StartAsync(ITestOutputHelper output, SyncDirs dirs, params string[] extraArgs)
    {
        string[] args =
        [
            "--agent-id", "sync-test-agent",
            "--workspace", dirs.Workspace,
            "--build-tool", FakeBazel.Path,
            "--listen", "127.0.0.1:0",
            "--sync-state-dir", dirs.State,
            .. extraArgs,
        ];
        return await StartRawAsync(output, args);
    }

    /// <summary>An agent with exactly these arguments.</summary>
    public static async Task<SyncTestAgent> StartRawAsync(ITestOutputHelper output, string[] args)
    {
        var logs = new TestOutputLoggerProvider(output);
        var app = AgentHost.Build(args, builder =>
        {
            builder.Logging.ClearProviders();
            builder.Logging.AddProvider(logs);
            builder.Logging.SetMinimumLevel(LogLevel.Warning);
            builder.Logging.AddFilter("Rbs", LogLevel.Debug);
        });
        await app.StartAsync().WaitAsync(TimeSpan.FromSeconds(30));
        var address = AgentReadyAnnouncer.BoundAddress(app.Services.GetRequiredService<IServer>())
            ?? throw new InvalidOperationException("the agent bound no address");
        TestLog.Write(output, $"agent listening on {address}");
        return new SyncTestAgent(app, address, logs);
    }

    public async ValueTask DisposeAsync()
    {
        Channel.Dispose();
        using (var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30)))
        {
            await App.StopAsync(cts.Token);
        }

        await App.DisposeAsync();
    }
}
