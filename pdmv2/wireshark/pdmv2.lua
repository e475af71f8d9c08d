-- PDMv2 for Wireshark / tshark: the IPv6 Performance and Diagnostic Metrics Destination Option,
-- version 2 (draft-ietf-ippm-encrypted-pdmv2-03), as implemented by pdmv2-lab.
--
-- Shipped with the pdmv2 package: `pdmv2 wireshark path` prints where this file is,
-- `pdmv2 wireshark install` copies it into the personal Lua plugins folder.
-- One-off use:  tshark -X lua_script:$(pdmv2 wireshark path) -r capture.pcap -Y pdmv2
--
-- How it hooks in: Wireshark has no dissector table for IPv6 options, so this script takes the
-- place of the Destination Options dissector on ip.proto 60, calls the built-in one first (the
-- header, its options and every layer after it are dissected as before), then walks the same
-- header itself and adds a "PDMv2" tree for each option of Type 0x0F with a PDMv2 length.
-- The built-in RFC 8250 dissector still runs and still says "PDM: Invalid length" for PDMv2
-- options; RFC 8250 options (Option Length 10) are left to it.
--
-- Layouts (docs/protocol.md section 1; Option Length tells them apart):
--   0x12 clear:     Type, Len, Vrsn(4) Reserved(12), RandomNumber(15) F(1),
--                   ScaleDTLR(8) ScaleDTLS(8) GlobalPointer(32) PSNTP(16) PSNLR(16) DELTATLR(16) DELTATLS(16)
--   0x22 encrypted: the same first 6 octets, then 14 octets of AEAD ciphertext and a 16-octet tag.
-- Times are DELTA << SCALE attoseconds (RFC 8250 section 3.2); the *_ns fields give them in ns.
--
-- Written for Lua 5.2 (Debian 12's Wireshark 4.0): bit32, no integer division.

local OPTION_TYPE_PDM = 0x0F
local LEN_PDM = 0x0A
local LEN_CLEAR = 0x12
local LEN_ENCRYPTED = 0x22
local PDMV2_VERSION = 2
local TAG_LEN = 16
local SEALED_FIELDS_LEN = 14

local pdmv2 = Proto("pdmv2", "IPv6 PDMv2 Destination Option (draft-ietf-ippm-encrypted-pdmv2-03)")

local layout_names = {
    [LEN_CLEAR] = "PDMv2 clear",
    [LEN_ENCRYPTED] = "PDMv2 encrypted",
}

local pf = {
    layout = ProtoField.uint8("pdmv2.option_length", "Option Length", base.HEX, layout_names),
    version = ProtoField.uint16("pdmv2.version", "Version", base.DEC, nil, 0xF000),
    reserved = ProtoField.uint16("pdmv2.reserved", "Reserved", base.HEX, nil, 0x0FFF),
    random_number = ProtoField.uint16("pdmv2.random_number", "Random Number", base.DEC, nil, 0xFFFE),
    f = ProtoField.uint16("pdmv2.f", "F (key rotation bit)", base.DEC, nil, 0x0001),
    scale_dtlr = ProtoField.uint8("pdmv2.scale_dtlr", "ScaleDTLR", base.DEC),
    scale_dtls = ProtoField.uint8("pdmv2.scale_dtls", "ScaleDTLS", base.DEC),
    global_pointer = ProtoField.uint32("pdmv2.global_pointer", "Global Pointer", base.DEC),
    psntp = ProtoField.uint16("pdmv2.psntp", "PSN This Packet", base.DEC),
    psnlr = ProtoField.uint16("pdmv2.psnlr", "PSN Last Received", base.DEC),
    delta_tlr = ProtoField.uint16("pdmv2.delta_tlr", "DELTATLR", base.HEX),
    delta_tls = ProtoField.uint16("pdmv2.delta_tls", "DELTATLS", base.HEX),
    delta_tlr_ns = ProtoField.double("pdmv2.delta_tlr_ns", "Delta Time Last Received (ns)"),
    delta_tls_ns = ProtoField.double("pdmv2.delta_tls_ns", "Delta Time Last Sent (ns)"),
    ciphertext = ProtoField.bytes("pdmv2.ciphertext", "Ciphertext (ScaleDTLR..DELTATLS, sealed)"),
    tag = ProtoField.bytes("pdmv2.tag", "Authentication tag"),
}
pdmv2.fields = {
    pf.layout, pf.version, pf.reserved, pf.random_number, pf.f,
    pf.scale_dtlr, pf.scale_dtls, pf.global_pointer, pf.psntp, pf.psnlr,
    pf.delta_tlr, pf.delta_tls, pf.delta_tlr_ns, pf.delta_tls_ns,
    pf.ciphertext, pf.tag,
}

local ef_malformed = ProtoExpert.new("pdmv2.malformed", "Malformed PDMv2 option",
    expert.group.MALFORMED, expert.severity.ERROR)
local ef_encrypted = ProtoExpert.new("pdmv2.encrypted", "PDMv2 metrics are encrypted",
    expert.group.SECURITY, expert.severity.NOTE)
pdmv2.experts = { ef_malformed, ef_encrypted }

-- Frame number -> one line for the Info column, added by the post-dissector below once the
-- upper layers have written theirs (they overwrite whatever is set before them).
local summaries = {}

-- DELTA << SCALE attoseconds, in ns.  A double holds 16 significant bits times any power of two
-- exactly, so this is the same value `pdmv2 decode` prints (delta_as / 1e9).
local function scaled_ns(delta, scale)
    return (delta * 2 ^ scale) / 1e9
end

local function add_time(tree, field_ns, delta_range, scale)
    local delta = delta_range:uint()
    local ns = scaled_ns(delta, scale)
    local item = tree:add(field_ns, delta_range, ns)
    item:set_generated()
    item:append_text(string.format(" (0x%04x << %d as)", delta, scale))
end

local function malformed(pinfo, tree, range, why)
    tree:add_proto_expert_info(ef_malformed, "Malformed PDMv2 option: " .. why)
    summaries[pinfo.number] = "[PDMv2 malformed: " .. why .. "]"
    if range ~= nil then
        tree:add(range, "[" .. why .. "]")
    end
end

-- One option of Type 0x0F at `off` in the header tvb; `avail` octets of the header follow `off`.
local function dissect_option(tvb, pinfo, tree, off, avail)
    local olen = tvb(off + 1, 1):uint()
    if olen == LEN_PDM then
        return -- RFC 8250 PDM: the built-in dissector reads it
    end
    local size = math.min(olen + 2, avail)
    local t = tree:add(pdmv2, tvb(off, size))
    t:add(pf.layout, tvb(off + 1, 1))
    if olen ~= LEN_CLEAR and olen ~= LEN_ENCRYPTED then
        t:append_text(string.format(": unknown Option Length 0x%02x", olen))
        malformed(pinfo, t, nil, string.format("Option Length 0x%02x is none of 0x0a, 0x12, 0x22", olen))
        return
    end
    if olen + 2 > avail then
        t:append_text(": truncated")
        malformed(pinfo, t, nil, string.format("option of %d octets runs past the header end (%d left)", olen + 2, avail))
        return
    end
    local vr = tvb(off + 2, 2)
    local rf = tvb(off + 4, 2)
    local version = bit32.rshift(vr:uint(), 12)
    local reserved = bit32.band(vr:uint(), 0x0FFF)
    t:add(pf.version, vr)
    t:add(pf.reserved, vr)
    t:add(pf.random_number, rf)
    t:add(pf.f, rf)
    local bad = false
    if version ~= PDMV2_VERSION then
        malformed(pinfo, t, vr, string.format("version %d with a PDMv2 length, expected 2", version))
        bad = true
    end
    if reserved ~= 0 then
        malformed(pinfo, t, vr, string.format("reserved bits 0x%03x are not zero", reserved))
        bad = true
    end
    local rn = bit32.rshift(rf:uint(), 1)
    local fbit = bit32.band(rf:uint(), 1)
    if olen == LEN_CLEAR then
        local b = off + 6
        local s_tlr, s_tls = tvb(b, 1):uint(), tvb(b + 1, 1):uint()
        t:add(pf.scale_dtlr, tvb(b, 1))
        t:add(pf.scale_dtls, tvb(b + 1, 1))
        t:add(pf.global_pointer, tvb(b + 2, 4))
        t:add(pf.psntp, tvb(b + 6, 2))
        t:add(pf.psnlr, tvb(b + 8, 2))
        t:add(pf.delta_tlr, tvb(b + 10, 2))
        t:add(pf.delta_tls, tvb(b + 12, 2))
        add_time(t, pf.delta_tlr_ns, tvb(b + 10, 2), s_tlr)
        add_time(t, pf.delta_tls_ns, tvb(b + 12, 2), s_tls)
        t:append_text(string.format(", clear: GP %d, PSNTP %d, PSNLR %d",
            tvb(b + 2, 4):uint(), tvb(b + 6, 2):uint(), tvb(b + 8, 2):uint()))
        if not bad then
            summaries[pinfo.number] = string.format("[PDMv2 PSNTP=%d PSNLR=%d GP=%d DTLR=%.3f ms]",
                tvb(b + 6, 2):uint(), tvb(b + 8, 2):uint(), tvb(b + 2, 4):uint(),
                scaled_ns(tvb(b + 10, 2):uint(), s_tlr) / 1e6)
        end
    else
        t:add(pf.ciphertext, tvb(off + 6, SEALED_FIELDS_LEN))
        t:add(pf.tag, tvb(off + 6 + SEALED_FIELDS_LEN, TAG_LEN))
        t:add_proto_expert_info(ef_encrypted, "PDMv2 metrics are encrypted (decrypt with `pdmv2 decode --write`)")
        t:append_text(string.format(", encrypted: Random Number %d, F %d", rn, fbit))
        if not bad then
            summaries[pinfo.number] = string.format("[PDMv2 encrypted RN=%d F=%d]", rn, fbit)
        end
    end
end

-- Walk the options of the Destination Options header at the start of tvb (RFC 8200 section 4.2).
local function walk(tvb, pinfo, tree)
    if tvb:len() < 2 then
        return
    end
    local hlen = (tvb(1, 1):uint() + 1) * 8
    hlen = math.min(hlen, tvb:len())
    local off = 2
    while off < hlen do
        local otype = tvb(off, 1):uint()
        if otype == 0 then -- Pad1
            off = off + 1
        else
            if off + 2 > hlen then
                if otype == OPTION_TYPE_PDM then
                    local t = tree:add(pdmv2, tvb(off, hlen - off))
                    malformed(pinfo, t, nil, "option truncated before its length octet")
                end
                return
            end
            local olen = tvb(off + 1, 1):uint()
            if otype == OPTION_TYPE_PDM then
                dissect_option(tvb, pinfo, tree, off, hlen - off)
            end
            off = off + 2 + olen
        end
    end
end

local ip_proto = DissectorTable.get("ip.proto")
local builtin_dstopts = ip_proto:get_dissector(60)

function pdmv2.dissector(tvb, pinfo, tree)
    -- Our tree first, so it shows between the IPv6 header and the upper layer.
    walk(tvb, pinfo, tree)
    if builtin_dstopts == nil then
        return 0
    end
    return builtin_dstopts:call(tvb, pinfo, tree)
end

ip_proto:add(60, pdmv2)

function pdmv2.init()
    summaries = {}
end

local pdmv2_info = Proto("pdmv2_info", "PDMv2 summary in the Info column")

function pdmv2_info.dissector(tvb, pinfo, tree)
    local line = summaries[pinfo.number]
    if line ~= nil then
        pinfo.cols.info:append(" " .. line)
    end
end

register_postdissector(pdmv2_info)
