using System.Net.Http;
using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Rbs.Agent.Hosting;
using Rbs.Agent.Lifetime;
using Rbs.Tests.Infrastructure;
using Rbs.V1;

namespace Rbs.Tests.Agent;

/// <summary>A real agent (AgentHost, Kestrel on 127.0.0.1:0) in the test process, running fake-bazel.sh.</summary>
internal sealed class TestAgent : IAsyncDisposable
{
    public const string AgentId = "test-agent";

    private readonly DirectoryInfo _workspaceDir;

    private TestAgent(WebApplication app, DirectoryInfo workspace, string address, TestOutputLoggerProvider logs)
    {
        App = app;
        Logs = logs;
        _workspaceDir = workspace;
        Workspace = Rbs.Agent.Execution.Native.RealPath(workspace.FullName)!;
        Address = address;
        Channel = GrpcChannel.ForAddress(address, new GrpcChannelOptions
        {
            HttpHandler = new SocketsHttpHandler { EnableMultipleHttp2Connections = true },
            MaxReceiveMessageSize = null,
        });
        Client = new Rbs.V1.Agent.AgentClient(Channel);
    }

    public WebApplication App { get; }

    /// <summary>The agent's log, with a count per RBS event id.</summary>
    public TestOutputLoggerProvider Logs { get; }

    /// <summary>The workspace root, symlinks resolved.</summary>
    public string Workspace { get; }

    public string Address { get; }

    public GrpcChannel Channel { get; }

    public Rbs.V1.Agent.AgentClient Client { get; }

    public static async Task<TestAgent> StartAsync(ITestOutputHelper output, params string[] extraArgs)
    {
        var workspace = Directory.CreateTempSubdirectory("rbs-agent-ws-");
        string[] args =
        [
            "--agent-id", AgentId,
            "--workspace", workspace.FullName,
            "--build-tool", FakeBazel.Path,
            "--listen", "127.0.0.1:0",
            .. extraArgs,
        ];
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
        TestLog.Write(output, $"agent listening on {address}, workspace {workspace.FullName}");
        return new TestAgent(app, workspace, address, logs);
    }

    /// <summary>Opens an ExecuteCommand stream and sends its start frame.</summary>
    public async Task<AsyncDuplexStreamingCall<ClientFrame, ServerFrame>> StartCommandAsync(
        StartCommand start,
        CancellationToken cancellationToken = default)
    {
        var call = Client.ExecuteCommand(cancellationToken: cancellationToken);
        await call.RequestStream.WriteAsync(new ClientFrame { Start = start }, cancellationToken);
        return call;
    }

    /// <summary>Runs a command to its exit frame, collecting all output in memory (for small outputs).</summary>
    public async Task<CommandResult> RunAsync(StartCommand start, TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        using var call = await StartCommandAsync(start, cts.Token);
        return await CommandResult.ReadToEndAsync(call, cts.Token).WaitAsync(timeout);
    }

    public async ValueTask DisposeAsync()
    {
        Channel.Dispose();
        using (var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30)))
        {
            await App.StopAsync(cts.Token);
        }

        await App.DisposeAsync();
        try
        {
            _workspaceDir.Delete(recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
