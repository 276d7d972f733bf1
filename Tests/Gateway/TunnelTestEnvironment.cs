using System.Security.Cryptography;
using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Rbs.Agent.Tunnel;
using Rbs.Gateway.Hosting;
using Rbs.Shared.Protocol;
using Rbs.Shared.Tokens;
using Rbs.Gateway.Tunnel;
using Rbs.Tests.Infrastructure;
using Rbs.V1;

namespace Rbs.Tests.Gateway;

/// <summary>Real Kestrel hosts on 127.0.0.1: a gateway, stand-in agents dialling out to it, gRPC clients.</summary>
/// <remarks>Not IAsyncDisposable on purpose: test classes call <see cref="StopAllAsync"/> from IAsyncLifetime.</remarks>
internal sealed class TunnelTestEnvironment(ITestOutputHelper output)
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    private readonly List<IAsyncDisposable> _disposables = [];

    public string Key { get; } = RbsTokenKeyRing.GenerateKey();

    /// <summary>
    /// The stand-in orchestrator a gateway asks about agents (<c>rbs.v1.AgentDirectory</c>) when a test passes no
    /// orchestrator; started with the first such gateway. It knows no agent until the test adds some to its Live map.
    /// </summary>
    public StandInAgentDirectory? StandInDirectory { get; private set; }

    public RbsTokenService Tokens => new(Convert.FromBase64String(Key), TimeProvider.System);

    public string JoinToken(string agentId, string user = "alice", TimeSpan? lifetime = null) =>
        Tokens.Mint(RbsTokenKind.Join, agentId, user, lifetime ?? TimeSpan.FromMinutes(10));

    public string SessionToken(string agentId, string user = "alice", TimeSpan? lifetime = null) =>
        Tokens.Mint(RbsTokenKind.Session, agentId, user, lifetime ?? TimeSpan.FromMinutes(10));

    /// <summary>A fresh internal token, as the orchestrator mints one per registration query.</summary>
    public string InternalToken() => Tokens.Mint(RbsTokenKind.Internal, "orchestrator", "orchestrator", TimeSpan.FromMinutes(2));

    /// <summary>The internal token as the orchestrator sends it to rbs.v1.GatewayRegistry.</summary>
    public Metadata InternalHeaders(string? token = null) => new() { { "authorization", "Bearer " + (token ?? InternalToken()) } };

    /// <summary>A client of rbs.v1.GatewayRegistry as the orchestrator reaches it: gRPC-Web over HTTP/1.1.</summary>
    public GatewayRegistry.GatewayRegistryClient RegistryClient(string address)
    {
        var channel = GrpcChannel.ForAddress(address, new GrpcChannelOptions
        {
            HttpHandler = new Grpc.Net.Client.Web.GrpcWebHandler(Grpc.Net.Client.Web.GrpcWebMode.GrpcWeb, new SocketsHttpHandler()),
            HttpVersion = System.Net.HttpVersion.Version11,
            HttpVersionPolicy = HttpVersionPolicy.RequestVersionExact,
        });
        _disposables.Add(new AsyncDisposable(() =>
        {
            channel.Dispose();
            return ValueTask.CompletedTask;
        }));
        return new GatewayRegistry.GatewayRegistryClient(channel);
    }

    public async Task<GatewayHost> StartGatewayAsync(string publicListen = "127.0.0.1:0", string agentListen = "127.0.0.1:0", string? orchestrator = null, string? certificatePath = null, int keepAliveSeconds = 5, IReadOnlyDictionary<string, string?>? settings = null, TimeProvider? timeProvider = null)
    {
        var keepAlive = TimeSpan.FromSeconds(keepAliveSeconds).ToString();
        if (orchestrator is null && StandInDirectory is null)
        {
            StandInDirectory = await StandInAgentDirectory.StartAsync(Key, output, timeProvider);
            _disposables.Add(StandInDirectory);
        }

        var builder = WebApplication.CreateBuilder(new WebApplicationOptions { EnvironmentName = "Production" });
        builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Gateway:PublicListen"] = publicListen,
            ["Gateway:AgentListen"] = agentListen,
            ["Gateway:TokenKey"] = Key,
            ["Gateway:OrchestratorAddress"] = orchestrator ?? StandInDirectory!.Address,
            ["Gateway:TunnelKeepAliveInterval"] = keepAlive,
            ["Gateway:TunnelKeepAliveTimeout"] = keepAlive,
            ["Gateway:CertificatePath"] = certificatePath,
        });
        builder.Configuration.AddInMemoryCollection(settings ?? new Dictionary<string, string?>());
        var logs = new TestOutputLoggerProvider(output, "gateway");
        builder.Logging.ClearProviders().SetMinimumLevel(LogLevel.Debug).AddProvider(logs);
        builder.WebHost.UseShutdownTimeout(TimeSpan.FromSeconds(2));
        if (timeProvider is not null)
        {
            builder.Services.AddSingleton(timeProvider);
        }

        builder.AddGateway();
        var app = builder.Build();
        app.MapGateway();
        await app.StartAsync().WaitAsync(Timeout);
        var host = new GatewayHost(app, logs);
        _disposables.Add(host);
        output.WriteLine($"gateway: public {host.PublicAddress}, agents {host.AgentAddress}");
        return host;
    }

    public async Task<AgentHost> StartAgentAsync(string agentId, string gatewayAgentAddress, string joinToken, int spares = 2, int keepAliveSeconds = 5, LogLevel logLevel = LogLevel.Debug, int connectTimeoutSeconds = 2, IReadOnlyDictionary<string, string?>? settings = null, TimeProvider? timeProvider = null)
    {
        var keepAlive = TimeSpan.FromSeconds(keepAliveSeconds).ToString();
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions { EnvironmentName = "Production" });
        builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Agent:Tunnel:GatewayAddress"] = gatewayAgentAddress,
            ["Agent:Tunnel:JoinToken"] = joinToken,
            ["Agent:Tunnel:SpareConnections"] = spares.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["Agent:Tunnel:ReconnectMaxDelay"] = "00:00:01",
            ["Agent:Tunnel:KeepAliveInterval"] = keepAlive,
            ["Agent:Tunnel:KeepAliveTimeout"] = keepAlive,
            ["Agent:Tunnel:ConnectTimeout"] = TimeSpan.FromSeconds(connectTimeoutSeconds).ToString(),
        });
        builder.Configuration.AddInMemoryCollection(settings ?? new Dictionary<string, string?>());
        var logs = new TestOutputLoggerProvider(output, "agent " + agentId);
        builder.Logging.ClearProviders().SetMinimumLevel(logLevel).AddProvider(logs);
        builder.WebHost.UseShutdownTimeout(TimeSpan.FromSeconds(2));
        if (timeProvider is not null)
        {
            builder.Services.AddSingleton(timeProvider);
        }

        Assert.True(builder.Configuration.IsAgentTunnelEnabled());
        builder.WebHost.UseAgentTunnel();
        builder.Services.AddGrpc();
        builder.Services.AddSingleton(new StandInAgentService(agentId));
        var app = builder.Build();
        app.MapGrpcService<StandInAgentService>();
        await app.StartAsync().WaitAsync(Timeout);
        var host = new AgentHost(app, logs);
        _disposables.Add(host);
        return host;
    }

    public GrpcChannel Channel(string address, SocketsHttpHandler? handler = null)
    {
        var channel = GrpcChannel.ForAddress(address, new GrpcChannelOptions
        {
            MaxReceiveMessageSize = 8 * 1024 * 1024,
            HttpHandler = handler ?? new SocketsHttpHandler { EnableMultipleHttp2Connections = true },
        });
        _disposables.Add(new AsyncDisposable(() =>
        {
            channel.Dispose();
            return ValueTask.CompletedTask;
        }));
        return channel;
    }

    public static Metadata Route(string agentId, string? sessionToken)
    {
        var metadata = new Metadata { { RbsHeaders.AgentRoute, agentId } };
        if (sessionToken is not null)
        {
            metadata.Add("authorization", "Bearer " + sessionToken);
        }

        return metadata;
    }

    /// <summary>Runs <c>bytes N SEED EXIT</c> and returns the SHA-256 of stdout, its length and the exit code.</summary>
    public static async Task<(byte[] Sha256, long Length, int ExitCode)> RunBytesAsync(V1.Agent.AgentClient client, Metadata metadata, long length, int seed, int exitCode = 0, CancellationToken cancellationToken = default)
    {
        using var call = client.ExecuteCommand(metadata, cancellationToken: cancellationToken);
        await call.RequestStream.WriteAsync(Start("bytes", length.ToString(System.Globalization.CultureInfo.InvariantCulture), seed.ToString(System.Globalization.CultureInfo.InvariantCulture), exitCode.ToString(System.Globalization.CultureInfo.InvariantCulture)), cancellationToken);
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        long received = 0;
        int? exit = null;
        await foreach (var frame in call.ResponseStream.ReadAllAsync(cancellationToken))
        {
            switch (frame.FrameCase)
            {
                case ServerFrame.FrameOneofCase.Stdout:
                    hash.AppendData(frame.Stdout.Span);
                    received += frame.Stdout.Length;
                    break;
                case ServerFrame.FrameOneofCase.Exit:
                    exit = frame.Exit.Code;
                    break;
            }
        }

        await call.RequestStream.CompleteAsync();
        return (hash.GetHashAndReset(), received, exit ?? throw new InvalidOperationException("the stream ended without an exit frame"));
    }

    public static ClientFrame Start(params string[] args)
    {
        var start = new StartCommand { InvocationId = Guid.NewGuid().ToString() };
        start.Args.AddRange(args);
        return new ClientFrame { Start = start };
    }

    /// <summary>Disposes <paramref name="disposable"/> with the environment (in reverse order of tracking).</summary>
    public void Track(IAsyncDisposable disposable) => _disposables.Add(disposable);

    public async Task StopAllAsync()
    {
        for (var i = _disposables.Count - 1; i >= 0; i--)
        {
            await _disposables[i].DisposeAsync();
        }
    }

    private sealed class AsyncDisposable(Func<ValueTask> dispose) : IAsyncDisposable
    {
        public ValueTask DisposeAsync() => dispose();
    }
}

internal sealed class GatewayHost(WebApplication app, TestOutputLoggerProvider logs) : IAsyncDisposable
{
    private int _stopped;

    public WebApplication App => app;

    public TestOutputLoggerProvider Logs => logs;

    public string PublicAddress => app.Services.GetRequiredService<GatewayEndpoints>().PublicAddress;

    public string AgentAddress => app.Services.GetRequiredService<GatewayEndpoints>().AgentAddress;

    public AgentTunnelRegistry Registry => app.Services.GetRequiredService<AgentTunnelRegistry>();

    public bool IsOnline(string agentId) => Registry.FindOnline(agentId) is not null;

    /// <summary>
    /// Waits until the agent's first tunnel is in this gateway's registry. The agent sees its tunnel open (the 101) a
    /// moment before the gateway adds it there, and a stream sent in between asks the directory, which in these tests
    /// knows no agent the test did not put in it: waiting for the agent's side alone races.
    /// </summary>
    public Task WaitRegisteredAsync(string agentId) =>
        TestWait.EventuallyAsync(() => IsOnline(agentId), $"agent {agentId} registered at the gateway", timeout: TunnelTestEnvironment.Timeout);

    public async Task StopAsync()
    {
        if (Interlocked.Exchange(ref _stopped, 1) == 0)
        {
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            await app.StopAsync(cts.Token);
            await app.DisposeAsync();
        }
    }

    public async ValueTask DisposeAsync() => await StopAsync();
}

internal sealed class AgentHost(WebApplication app, TestOutputLoggerProvider logs) : IAsyncDisposable
{
    private int _stopped;

    public WebApplication App => app;

    public TestOutputLoggerProvider Logs => logs;

    public AgentTunnelStatus Status => app.Services.GetRequiredService<AgentTunnelStatus>();

    public CancellationToken Stopping => app.Services.GetRequiredService<IHostApplicationLifetime>().ApplicationStopping;

    public async Task StopAsync()
    {
        if (Interlocked.Exchange(ref _stopped, 1) == 0)
        {
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            await app.StopAsync(cts.Token);
            await app.DisposeAsync();
        }
    }

    public async ValueTask DisposeAsync() => await StopAsync();
}
