namespace Rbs.Tests.Gateway;

/// <summary>
/// The functional gateway tests run one at a time: they are CPU-heavy on a 2-core machine, and the
/// "client sees the failure within 2 s" bound should measure the gateway, not a neighbour's 200 streams.
/// </summary>
[CollectionDefinition(Name)]
public sealed class TunnelCollection
{
    public const string Name = "Gateway tunnels";
}
