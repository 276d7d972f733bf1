using System.Text.Json.Serialization;

namespace Rbs.Shared.Protocol;

/// <summary>
/// The live gateway replicas, as a replica's agent endpoint serves them to agents (gateway → agent):
/// <c>GET /tunnel/v1/replicas?version=V</c> with the agent's join token answers at once when the set's version is not
/// <c>V</c>, else long-polls until it changes or <see cref="MaxWait"/> passes. An agent keeps its spare tunnels to
/// every replica in <see cref="Replicas"/> (docs/connect-modes.md, "Several gateway replicas").
/// </summary>
/// <param name="Version">Changes whenever the set does (opaque to the agent).</param>
/// <param name="Replicas">Every live replica that takes tunnels now, ordered by id; a draining replica is not in it.</param>
internal sealed record GatewayReplicaList(string Version, IReadOnlyList<GatewayReplicaEntry> Replicas)
{
    /// <summary>The path on the gateway's agent endpoint.</summary>
    public const string Path = "/tunnel/v1/replicas";

    /// <summary>The query parameter naming the version the agent holds.</summary>
    public const string VersionQuery = "version";

    /// <summary>The longest the gateway holds a request whose version is current.</summary>
    public static readonly TimeSpan MaxWait = TimeSpan.FromSeconds(20);
}

/// <summary>One replica: its id and the address of its agent endpoint that agents dial directly.</summary>
internal sealed record GatewayReplicaEntry(string Id, string AgentAddress);

/// <summary>The JSON of <see cref="GatewayReplicaList"/> (source-generated, camelCase), for both ends.</summary>
[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase)]
[JsonSerializable(typeof(GatewayReplicaList))]
internal sealed partial class GatewayReplicaJson : JsonSerializerContext;
