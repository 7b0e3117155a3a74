/* ftlens flow graph: input segments (left), reasoning steps (middle), the answer (right).
   D: flow_data() (nodes, edges, routes, dist rows, token scores); O: {id, unit, head_unit}.
   Draws one SVG <path class="ft-edge"> per edge; a click on an edge or a node shows its top heads
   and its token heatmap (CircuitsVis ColoredTokens), a click on a route highlights its edges. */
(function(){
var D=__DATA__;
var O=__OPTIONS__;
var NS="http://www.w3.org/2000/svg";
var root=document.getElementById(O.id), box=document.getElementById(O.id+"-svg"),
    detail=document.getElementById(O.id+"-detail"), rtab=document.getElementById(O.id+"-routes");
var BW=230, BH=24, RH=30, TOP=24, W=1020, XI=8, XS=395, XA=W-BW-8;
var inputs=[], steps=[], pos={};
D.nodes.forEach(function(n,i){
  if(n.kind==="answer") return;
  (n.kind==="step"?steps:inputs).push(i);
});
inputs.forEach(function(i,k){pos[i]={x:XI,y:TOP+k*RH};});
steps.forEach(function(i,k){pos[i]={x:XS,y:TOP+k*RH};});
var rowsN=Math.max(inputs.length,steps.length,1), H=TOP+rowsN*RH+10;
pos[D.answer]={x:XA,y:TOP+Math.max(0,(rowsN-1)/2)*RH};
function fmt(v){return (+v).toPrecision(3);}
function esc(t){return String(t).replace(/[&<>"']/g,function(c){return "&#"+c.charCodeAt(0)+";";});}
function el(tag,attrs,parent){var e=document.createElementNS(NS,tag);
  for(var k in attrs)e.setAttribute(k,attrs[k]); if(parent)parent.appendChild(e); return e;}
function shorten(t,n){t=t.replace(/\n/g,"\u21b5").replace(/\s+/g," ").trim(); return t.length>n?t.slice(0,n-1)+"\u2026":t;}
var svg=el("svg",{width:W,height:H,viewBox:"0 0 "+W+" "+H,"class":"ft-flow-graph"});
box.appendChild(svg);
[["input segments",XI],["reasoning steps",XS],["answer",XA]].forEach(function(c){
  var t=el("text",{x:c[1],y:14,"class":"ft-col"},svg); t.textContent=c[0];});
var maxFlow=0; D.edges.forEach(function(e){maxFlow=Math.max(maxFlow,e.flow);});
var gEdges=el("g",{},svg), gNodes=el("g",{},svg);
function nodeTitle(i){return D.nodes[i].name;}
D.edges.forEach(function(e,k){
  var a=pos[e.y], b=pos[e.x], x1=a.x+BW, y1=a.y+BH/2, d;
  var src=D.nodes[e.y], dst=D.nodes[e.x];
  if(src.kind==="step"&&dst.kind==="step"){ // arc on the right of the step column
    var y2=b.y+BH/2, bulge=30+Math.min(120,Math.abs(y2-y1)*0.35);
    d="M"+x1+","+y1+" C"+(x1+bulge)+","+y1+" "+(x1+bulge)+","+y2+" "+x1+","+y2;
  } else {
    var x2=b.x, y2b=b.y+BH/2, mx=(x1+x2)/2;
    d="M"+x1+","+y1+" C"+mx+","+y1+" "+mx+","+y2b+" "+x2+","+y2b;
  }
  var wpx=Math.max(0.8,16*e.flow/(maxFlow||1));
  var p=el("path",{d:d,"class":"ft-edge","data-x":e.x,"data-y":e.y,"data-k":k,
    stroke:D.colors[src.kind]||"#888","stroke-width":wpx.toFixed(2),fill:"none"},gEdges);
  var t=el("title",{},p);
  t.textContent=src.name+" \u2192 "+dst.name+": W["+dst.name+", "+src.name+"] = "+fmt(e.w)+
    ", loop-folded "+fmt(e.wf)+"; flow "+fmt(e.flow)+" ("+O.unit+")";
  p.addEventListener("click",function(){showEdge(k);});
});
var maxMass={}; D.nodes.forEach(function(n){maxMass[n.kind]=Math.max(maxMass[n.kind]||0,n.mass);});
D.nodes.forEach(function(n,i){
  var q=pos[i], g=el("g",{"class":"ft-node","data-i":i,transform:"translate("+q.x+","+q.y+")"},gNodes);
  var f=n.kind==="answer"?1:Math.max(0.08,n.mass/(maxMass[n.kind]||1));
  el("rect",{width:BW,height:BH,rx:4,fill:"#fff",stroke:D.colors[n.kind]||"#888"},g);
  el("rect",{width:(BW*f).toFixed(1),height:BH,rx:4,fill:D.colors[n.kind]||"#888","fill-opacity":0.28},g);
  var t=el("text",{x:5,y:16},g);
  t.textContent=n.name+" "+fmt(n.mass)+"  "+shorten(n.text,26);
  var ti=el("title",{},g); ti.textContent=n.name+" ("+n.kind+", positions "+n.start+":"+n.end+"), mass "+
    fmt(n.mass)+": "+n.text;
  g.addEventListener("click",function(){showNode(i);});
});
// routes table
var hr=document.createElement("tr"); hr.innerHTML="<th>mass</th><th style='text-align:left'>route</th>"; rtab.appendChild(hr);
D.routes.forEach(function(r,k){
  var tr=document.createElement("tr"); tr.className="ft-route-row"; tr.dataset.k=k;
  var a=document.createElement("td"); a.textContent=fmt(r.mass);
  var b=document.createElement("td"); b.style.textAlign="left";
  b.textContent=r.nodes.map(nodeTitle).join(" \u2192 ");
  tr.appendChild(a); tr.appendChild(b); rtab.appendChild(tr);
  tr.addEventListener("click",function(){showRoute(k,tr);});
});
function clearSel(){
  root.querySelectorAll(".ft-sel").forEach(function(e){e.classList.remove("ft-sel");});
  root.classList.remove("ft-dim");
  root.querySelectorAll(".ft-on").forEach(function(e){e.classList.remove("ft-on");});
}
function showRoute(k,tr){
  clearSel(); tr.classList.add("ft-sel"); root.classList.add("ft-dim");
  var ns=D.routes[k].nodes;
  for(var j=0;j+1<ns.length;j++){
    var p=gEdges.querySelector('path[data-x="'+ns[j+1]+'"][data-y="'+ns[j]+'"]');
    if(p)p.classList.add("ft-on");
  }
  ns.forEach(function(i){var g=gNodes.querySelector('g[data-i="'+i+'"]'); if(g)g.classList.add("ft-on");});
}
function headsTable(heads,unit){
  var h="<table class='ft-table ft-heads'><tr><th>rank</th><th>head</th><th>"+esc(unit)+"</th></tr>";
  heads.forEach(function(x,r){h+="<tr><td>"+(r+1)+"</td><td>L"+x[0]+"H"+x[1]+"</td><td>"+fmt(x[2])+"</td></tr>";});
  return h+"</table>";
}
var serial=0;
function heat(vals,mark,label,upto){
  // vals over positions D.first.. ; mark = [start, end) absolute, drawn boxed; the colour scale is
  // the largest |value| off the chat template before position upto (a node's mass on itself saturates)
  var m=0, u=upto-D.first;
  vals.forEach(function(v,j){if(D.roles[j]!=="template"&&j<u)m=Math.max(m,Math.abs(v));});
  if(!m)vals.forEach(function(v){m=Math.max(m,Math.abs(v));});
  m=m||1;
  var wrap=document.createElement("div"); wrap.className="ft-flow-heat";
  var cap=document.createElement("div"); cap.className="ft-note"; cap.textContent=label+" (scale 0.."+fmt(m)+")";
  wrap.appendChild(cap); detail.appendChild(wrap);
  var n=vals.length, a=Math.max(0,Math.min(n,mark[0]-D.first)), b=Math.max(a,Math.min(n,mark[1]-D.first));
  [[0,a,""],[a,b,"ft-mark"],[b,n,""]].forEach(function(s){
    if(s[1]<=s[0])return;
    var d=document.createElement("div"); d.id=O.id+"-cv"+(serial++); d.className="ft-heat-part "+s[2];
    wrap.appendChild(d);
    if(typeof CircuitsVis!=="undefined"){CircuitsVis.render(d.id,CircuitsVis.ColoredTokens,
      {tokens:D.tokens.slice(s[0],s[1]),values:vals.slice(s[0],s[1]),minValue:-m,maxValue:m});}
  });
}
function nodeHeat(i,mark,what){
  var n=D.nodes[i];
  if(n.heat.inputs){
    heat(D.inputs,mark,"mass absorbed per input token over every path (token_scores); boxed: "+what,D.inputs_end);
  } else {
    var row=D.dist[n.heat.row].slice(0,n.end-D.first);
    heat(row,mark,"attribution of "+n.name+" over earlier positions, p_"+n.name+" (dist row); boxed: "+what+
      "; its own tokens saturate",n.start);
  }
}
function showEdge(k){
  clearSel();
  var e=D.edges[k], p=gEdges.querySelector('path[data-k="'+k+'"]'); p.classList.add("ft-sel");
  var x=D.nodes[e.x], y=D.nodes[e.y];
  detail.innerHTML="";
  var h=document.createElement("div"); h.className="ft-flow-info"; h.dataset.edge=e.x+","+e.y;
  var xn=esc(x.name), yn=esc(y.name);
  h.innerHTML="<b>Edge "+yn+" \u2192 "+xn+"</b>: W["+xn+", "+yn+"] = "+fmt(e.w)+
    " of "+xn+"'s attribution lands on "+yn+" (loop-folded "+fmt(e.wf)+"); flow "+fmt(e.flow)+
    " of the answer's mass. Heads carrying it (top_edge_heads, "+esc(O.head_unit)+"):"+headsTable(e.heads,O.head_unit);
  detail.appendChild(h);
  nodeHeat(e.x,[y.start,y.end],y.name);
}
function showNode(i){
  clearSel();
  var n=D.nodes[i], g=gNodes.querySelector('g[data-i="'+i+'"]'); g.classList.add("ft-sel");
  detail.innerHTML="";
  var h=document.createElement("div"); h.className="ft-flow-info"; h.dataset.node=i;
  var what=n.kind==="answer"?"the answer (mass 1)":n.kind==="step"?"relayed mass "+fmt(n.mass):"absorbed mass "+fmt(n.mass);
  var src=n.heat.inputs?"the heads carrying the mass it absorbs, over every edge into it":"the heads of its span pass, on every earlier node";
  h.innerHTML="<b>Node "+esc(n.name)+"</b> ("+esc(n.kind)+", positions "+n.start+":"+n.end+"), "+what+
    ". Top heads ("+src+", "+esc(O.head_unit)+"):"+headsTable(n.heads,O.head_unit);
  var tx=document.createElement("div"); tx.className="ft-note"; tx.textContent=n.text; h.appendChild(tx);
  detail.appendChild(h);
  nodeHeat(i,[n.start,n.end],n.name);
}
// open on the heaviest edge
var best=-1, bf=-1; D.edges.forEach(function(e,k){if(e.flow>bf){bf=e.flow;best=k;}});
if(best>=0)showEdge(best); else showNode(D.answer);
})();
