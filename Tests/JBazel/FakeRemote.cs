using System.Collections.Concurrent;
using System.Net;
using System.Threading.Channels;
using Grpc.Core;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Rbs.Tests.Infrastructure;
using Rbs.V1;

namespace Rbs.Tests.JBazel;

/// <summary>
/// A fake orchestrator and agent for jbazel's functional tests: real Kestrel on 127.0.0.1:0 speaking the
/// real rbs.v1 gRPC services over h2c, with behaviour each test scripts. (The real servers are tested in
/// Tests/Orchestrator and Tests/Agent; here they stand in so jbazel's side can be driven precisely.)
/// </summary>
public sealed class FakeRemote : IAsyncDisposable
{
    public const string AgentId = "fake-agent-1";

    private readonly WebApplication _app;

    private readonly Holder _holder;

    private int _proxyFailuresServed;

    private FakeRemote(WebApplication app, Uri address, Holder holder)
    {
        _app = app;
        _holder = holder;
        Address = address;
        GetServer = (_, _) => Task.FromResult(DirectResponse());
        Execute = call => call.ExitAsync(0);
    }

    public Uri Address { get; }

    /// <summary>Scripted GetServer; default: this host as a warm direct agent.</summary>
    public Func<GetServerRequest, ServerCallContext, Task<GetServerResponse>> GetServer { get; set; }

    /// <summary>Scripted ExecuteCommand, called after the start frame arrived; default: exit 0.</summary>
    public Func<AgentCall, Task> Execute { get; set; }

    public ConcurrentQueue<(GetServerRequest Request, Metadata Headers)> GetServerCalls { get; } = new();

    /// <summary>HTTP status codes the next orchestrator calls get instead of a gRPC answer, as from a proxy (each used once).</summary>
    public ConcurrentQueue<int> ProxyFailures { get; } = new();

    /// <summary>The same for calls to the agent (<c>rbs.v1.Agent</c>): the call never reaches the fake agent.</summary>
    public ConcurrentQueue<int> AgentProxyFailures { get; } = new();

    /// <summary>Calls answered from <see cref="ProxyFailures"/> or <see cref="AgentProxyFailures"/>.</summary>
    public int ProxyFailuresServed => Volatile.Read(ref _proxyFailuresServed);

    public ConcurrentQueue<AgentCall> AgentCalls { get; } = new();

    /// <summary>The id the fake agent answers rbs.v1.Agent/GetStatus with; null (the default): Unimplemented, like an agent that cannot confirm a cached allocation.</summary>
    public string? StatusAgentId { get; set; }

    /// <summary>GetStatus calls the fake agent answered or refused.</summary>
    public int StatusCalls => Volatile.Read(ref _statusCalls);

    private int _statusCalls;

    public static async Task<FakeRemote> StartAsync(ITestOutputHelper output)
    {
        var holder = new Holder();
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.Logging.AddProvider(new TestOutputLoggerProvider(output));
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        builder.WebHost.ConfigureKestrel(kestrel =>
            kestrel.Listen(IPAddress.Loopback, 0, listen =>
            {
                listen.Protocols = HttpProtocols.Http2;
                listen.Use(next => async connection =>
                {
                    holder.Connections[connection.ConnectionId] = connection;
                    try
                    {
                        await next(connection);
                    }
                    finally
                    {
                        holder.Connections.TryRemove(connection.ConnectionId, out _);
                    }
                });
            }));
        builder.Services.AddGrpc(options => options.MaxReceiveMessageSize = 64 * 1024 * 1024);
        builder.Services.AddSingleton(holder);
        var app = builder.Build();
        // A load balancer whose upstream failed: plain HTTP errors in place of gRPC answers (ProxyFailures).
        app.Use(async (context, next) =>
        {
            var remote = holder.Remote!;
            var failures = context.Request.Path.StartsWithSegments("/rbs.v1.Orchestrator") ? remote.ProxyFailures
                : context.Request.Path.StartsWithSegments("/rbs.v1.Agent") ? remote.AgentProxyFailures : null;
            if (failures is not null && failures.TryDequeue(out var status))
            {
                Interlocked.Increment(ref remote._proxyFailuresServed);
                context.Response.StatusCode = status;
                return;
            }

            await next(context);
        });
        app.MapGrpcService<FakeOrchestratorService>();
        app.MapGrpcService<FakeAgentService>();
        await app.StartAsync().WaitAsync(TimeSpan.FromSeconds(30));
        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.Single();
        var remote = new FakeRemote(app, new Uri(address), holder);
        holder.Remote = remote;
        TestLog.Write(output, $"fake remote listening on {remote.Address}");
        return remote;
    }

    public GetServerResponse DirectResponse() => new()
    {
        AgentId = AgentId,
        Address = Address.ToString().TrimEnd('/'),
        Warm = true,
        ConnectMode = ConnectMode.Direct,
        Backend = "process",
        BackendRef = "4242",
        WorkspacePath = "/unused",
    };

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync().WaitAsync(TimeSpan.FromSeconds(10));
        await _app.DisposeAsync();
    }

    /// <summary>Closes every client connection's socket, as when the agent's process dies.</summary>
    public void AbortConnections()
    {
        foreach (var connection in _holder.Connections.Values)
        {
            connection.Abort(new Microsoft.AspNetCore.Connections.ConnectionAbortedException("the fake agent died"));
        }
    }

    internal sealed class Holder
    {
        public FakeRemote? Remote { get; set; }

        public ConcurrentDictionary<string, Microsoft.AspNetCore.Connections.ConnectionContext> Connections { get; } = new();
    }

    internal sealed class FakeOrchestratorService(Holder holder) : V1.Orchestrator.OrchestratorBase
    {
        public override Task<GetServerResponse> GetServer(GetServerRequest request, ServerCallContext context)
        {
            holder.Remote!.GetServerCalls.Enqueue((request, context.RequestHeaders));
            return holder.Remote.GetServer(request, context);
        }
    }

    internal sealed class FakeAgentService(Holder holder) : V1.Agent.AgentBase
    {
        public override Task<AgentStatus> GetStatus(GetStatusRequest request, ServerCallContext context)
        {
            var remote = holder.Remote!;
            Interlocked.Increment(ref remote._statusCalls);
            return remote.StatusAgentId is { } id
                ? Task.FromResult(new AgentStatus { AgentId = id, Pid = 4242 })
                : throw new RpcException(new Status(StatusCode.Unimplemented, "the fake agent has no GetStatus"));
        }

        public override async Task ExecuteCommand(IAsyncStreamReader<ClientFrame> requestStream, IServerStreamWriter<ServerFrame> responseStream, ServerCallContext context)
        {
            if (!await requestStream.MoveNext(context.CancellationToken) || requestStream.Current.FrameCase != ClientFrame.FrameOneofCase.Start)
            {
                throw new RpcException(new Status(StatusCode.InvalidArgument, "the first frame must be start"));
            }

            var call = new AgentCall(requestStream.Current.Start, requestStream, responseStream, context);
            holder.Remote!.AgentCalls.Enqueue(call);
            call.StartReading();
            await holder.Remote.Execute(call);
        }
    }
}

/// <summary>One ExecuteCommand on the fake agent: what the client sent, and helpers to answer it.</summary>
public sealed class AgentCall(
    StartCommand start,
    IAsyncStreamReader<ClientFrame> requests,
    IServerStreamWriter<ServerFrame> responses,
    ServerCallContext context)
{
    private readonly System.Buffers.ArrayBufferWriter<byte> _stdin = new();
    private readonly TaskCompletionSource<byte[]> _stdinEof = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _clientGone = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public StartCommand Start { get; } = start;

    public ServerCallContext Context { get; } = context;

    /// <summary>The request headers, copied at the start (the server context is gone after the call).</summary>
    public Metadata Headers { get; } = Copy(context.RequestHeaders);

    /// <summary>Every stdin byte, once the client sent stdin_eof.</summary>
    public Task<byte[]> StdinAtEof => _stdinEof.Task;

    /// <summary>Interrupt frames in arrival order.</summary>
    public Channel<Interrupt> Interrupts { get; } = Channel.CreateUnbounded<Interrupt>();

    /// <summary>Resize frames in arrival order.</summary>
    public Channel<Resize> Resizes { get; } = Channel.CreateUnbounded<Resize>();

    /// <summary>Stdin frames' bytes as they arrive (raw mode sends each keystroke at once).</summary>
    public Channel<byte[]> StdinChunks { get; } = Channel.CreateUnbounded<byte[]>();

    /// <summary>Completes when the client's request stream ended or the call was cancelled.</summary>
    public Task ClientGone => _clientGone.Task;

    public CancellationToken Aborted => Context.CancellationToken;

    internal void StartReading() => _ = Task.Run(async () =>
    {
        try
        {
            while (await requests.MoveNext(Context.CancellationToken))
            {
                var frame = requests.Current;
                switch (frame.FrameCase)
                {
                    case ClientFrame.FrameOneofCase.Stdin:
                        System.Buffers.BuffersExtensions.Write(_stdin, frame.Stdin.Span);
                        StdinChunks.Writer.TryWrite(frame.Stdin.ToByteArray());
                        break;
                    case ClientFrame.FrameOneofCase.Resize:
                        Resizes.Writer.TryWrite(frame.Resize);
                        break;
                    case ClientFrame.FrameOneofCase.StdinEof:
                        _stdinEof.TrySetResult(_stdin.WrittenSpan.ToArray());
                        break;
                    case ClientFrame.FrameOneofCase.Interrupt:
                        Interrupts.Writer.TryWrite(frame.Interrupt);
                        break;
                    default:
                        break;
                }
            }
        }
        catch (Exception)
        {
            // Cancelled or reset: the client went away.
        }
        finally
        {
            _clientGone.TrySetResult();
            Interrupts.Writer.TryComplete();
            Resizes.Writer.TryComplete();
            StdinChunks.Writer.TryComplete();
        }
    });

    public Task StdoutAsync(ReadOnlySpan<byte> bytes) => responses.WriteAsync(new ServerFrame { Stdout = Google.Protobuf.ByteString.CopyFrom(bytes) }, Aborted);

    public Task StderrAsync(ReadOnlySpan<byte> bytes) => responses.WriteAsync(new ServerFrame { Stderr = Google.Protobuf.ByteString.CopyFrom(bytes) }, Aborted);

    public Task StdoutAsync(string text) => StdoutAsync(System.Text.Encoding.UTF8.GetBytes(text));

    private static Metadata Copy(Metadata headers)
    {
        var copy = new Metadata();
        foreach (var entry in headers)
        {
            copy.Add(entry);
        }

        return copy;
    }

    public Task ExitAsync(int code) => responses.WriteAsync(new ServerFrame { Exit = new ExitStatus { Code = code } }, Aborted);
}
