using System.Text.Json;
using System.Text.Json.Serialization;
using System.Text.Json.Serialization.Metadata;

namespace Rbs.Shared.Hosting;

/// <summary>
/// The ready file a server writes once it can be reached (<c>--ready-file FILE</c>): one small JSON object, written
/// whole or not at all, which its spawner (the orchestrator for its agents, e2e/lib.sh and bench/*.sh with jq, the
/// tests) waits for. Each server has its own shape below; the JSON field names are the contract those readers spell,
/// so they never change. A field two shapes share means the same in both: <c>pid</c> is always the writer's own
/// process id; <c>address</c> is what a client dials to reach the writer (the agent's or the orchestrator's gRPC
/// endpoint).
/// </summary>
internal static class ReadyFile
{
    /// <summary>What is appended to the ready file's path for the file written first and then renamed over it.</summary>
    public const string TemporarySuffix = ".tmp";

    /// <summary>
    /// Writes <paramref name="contents"/> to <paramref name="path"/> atomically: to <c>&lt;path&gt;.tmp</c> first, flushed to
    /// disk, then renamed over <paramref name="path"/>, so a reader sees the old file, no file or the whole new one — never
    /// half of it. Creates the directory when missing. Throws <see cref="IOException"/> or
    /// <see cref="UnauthorizedAccessException"/> when it cannot.
    /// </summary>
    public static void Write<T>(string path, T contents)
        where T : class, IReadyFileContents
    {
        var full = Path.GetFullPath(path);
        var directory = Path.GetDirectoryName(full);
        if (!string.IsNullOrEmpty(directory))
        {
            Directory.CreateDirectory(directory);
        }

        var temporary = full + TemporarySuffix;
        using (var stream = new FileStream(temporary, FileMode.Create, FileAccess.Write, FileShare.None))
        {
            JsonSerializer.Serialize(stream, contents, TypeInfo<T>());
            stream.Flush(flushToDisk: true);
        }

        File.Move(temporary, full, overwrite: true);
    }

    /// <summary>
    /// The ready file at <paramref name="path"/>; null while there is none, or when what is there is not a whole
    /// <typeparamref name="T"/> (not JSON, cut short, a required field missing or null).
    /// </summary>
    public static T? TryRead<T>(string path)
        where T : class, IReadyFileContents
    {
        try
        {
            return JsonSerializer.Deserialize(File.ReadAllBytes(path), TypeInfo<T>());
        }
        catch (Exception e) when (e is IOException or JsonException)
        {
            return null;
        }
    }

    /// <inheritdoc cref="TryRead{T}(string)"/>
    public static async Task<T?> TryReadAsync<T>(string path, CancellationToken cancellationToken)
        where T : class, IReadyFileContents
    {
        try
        {
            return JsonSerializer.Deserialize(await File.ReadAllBytesAsync(path, cancellationToken), TypeInfo<T>());
        }
        catch (Exception e) when (e is IOException or JsonException)
        {
            return null;
        }
    }

    private static JsonTypeInfo<T> TypeInfo<T>()
        where T : class, IReadyFileContents =>
        (JsonTypeInfo<T>)(ReadyFileJsonContext.Default.GetTypeInfo(typeof(T))
            ?? throw new InvalidOperationException($"{typeof(T).Name} is not in {nameof(ReadyFileJsonContext)}"));
}

/// <summary>What every ready file carries: the shapes below, one per server.</summary>
internal interface IReadyFileContents
{
    /// <summary><c>pid</c>: the writer's process id (e2e/lib.sh stops agents by it; the orchestrator checks it is alive).</summary>
    int Pid { get; }
}

/// <summary>
/// rbs-agent's ready file, <c>{"agentId":..,"pid":..,"address":..}</c>: written once it listens (direct mode), or
/// for a tunnel-only agent once its first tunnel to the gateway is up. The orchestrator's process backend waits for it
/// (ProcessComputeService) and then records pid and address in its own spec file.
/// </summary>
/// <param name="AgentId"><c>agentId</c>: the <c>--agent-id</c> it was started with; a reader checks it is the agent it started.</param>
/// <param name="Pid"><c>pid</c>: the agent's process id.</param>
/// <param name="Address"><c>address</c>: its direct gRPC address (<c>http://127.0.0.1:PORT</c>), or <see cref="TunnelOnlyAddress"/>.</param>
internal sealed record AgentReadyFile(string AgentId, int Pid, string Address) : IReadyFileContents
{
    /// <summary>The <c>address</c> of an agent that has no listener, only tunnels (<c>--gateway</c> without <c>--listen</c>).</summary>
    public const string TunnelOnlyAddress = "tunnel";
}

/// <summary>rbs-gateway's ready file, <c>{"publicAddress":..,"agentAddress":..,"pid":..}</c>: written once both endpoints listen.</summary>
/// <param name="PublicAddress"><c>publicAddress</c>: the endpoint jbazel dials in tunnel mode (<c>--gateway-public-address</c> of the orchestrator).</param>
/// <param name="AgentAddress"><c>agentAddress</c>: the endpoint agents dial out to (<c>--gateway-agent-address</c> of the orchestrator).</param>
/// <param name="Pid"><c>pid</c>: the gateway's process id.</param>
internal sealed record GatewayReadyFile(string PublicAddress, string AgentAddress, int Pid) : IReadyFileContents;

/// <summary>
/// rbs-orchestrator's ready file, <c>{"address":..,"pid":..}</c>: written once it listens, removed when it stops so a
/// stale one never points at a dead orchestrator.
/// </summary>
/// <param name="Address"><c>address</c>: its bound gRPC address as Kestrel reports it (e.g. <c>http://127.0.0.1:50051</c>; a wildcard stays as is).</param>
/// <param name="Pid"><c>pid</c>: the orchestrator's process id.</param>
internal sealed record OrchestratorReadyFile(string Address, int Pid) : IReadyFileContents;

/// <summary>
/// The ready files' JSON, source-generated (no reflection, so trimming and Native AOT keep it): camelCase names, field
/// names matched case-insensitively on read as the web defaults do, and a missing or null field fails the read.
/// </summary>
[JsonSourceGenerationOptions(JsonSerializerDefaults.Web, RespectNullableAnnotations = true, RespectRequiredConstructorParameters = true)]
[JsonSerializable(typeof(AgentReadyFile))]
[JsonSerializable(typeof(GatewayReadyFile))]
[JsonSerializable(typeof(OrchestratorReadyFile))]
internal sealed partial class ReadyFileJsonContext : JsonSerializerContext;
